// The outbox: events waiting to be sent, in order, bounded, mirrored in memory so that a
// page that is being hidden can send them synchronously (sendBeacon), and kept in a durable
// store so that events survive a reload or a crash. Store writes run one after another.

import { MemoryStore } from './stores.js'

/**
 * @typedef {object} OutboxRecord
 * @property {string} id the message id
 * @property {number} t when it was queued (ms)
 * @property {number} seq order among records queued at the same millisecond
 * @property {string[]} purposes consent purposes it needs; revoking one purges it
 * @property {object} message the Segment message, as sent
 */

export class Queue {
  /** @type {OutboxRecord[]} */
  records = []
  dropped = 0
  #inFlight = new Set()
  #seq = 0
  #chain
  #store

  /**
   * @param {{store?: import('./stores.js').OutboxStore, maxSize?: number, onError?: (e: Error) => void}} options
   */
  constructor({ store = new MemoryStore(), maxSize = 1000, onError = () => {} } = {}) {
    this.#store = store
    this.maxSize = maxSize
    this.onError = onError
    this.#chain = this.#load()
    this.ready = this.#chain
  }

  get durable() {
    return this.#store.durable
  }

  get size() {
    return this.records.length
  }

  async #load() {
    let stored = []
    try {
      stored = await this.#store.getAll()
    } catch (error) {
      this.onError(new Error(`outbox store unavailable, keeping events in memory: ${error?.message ?? error}`))
      this.#store = new MemoryStore()
    }
    const held = new Set(this.records.map((r) => r.id))
    const earlier = stored.filter((r) => r && r.id && r.message && !held.has(r.id))
    const loaded = new Set(stored.map((r) => r?.id))
    const unsaved = this.records.filter((r) => !loaded.has(r.id))
    this.records = [...earlier, ...this.records].sort((a, b) => a.t - b.t || a.seq - b.seq)
    this.#seq = Math.max(this.#seq, ...this.records.map((r) => r.seq + 1))
    this.#trim()
    await this.#store.put(unsaved.filter((r) => this.records.includes(r))).catch((error) => {
      this.onError(new Error(`outbox store write failed: ${error?.message ?? error}`))
    })
  }

  /** Moves the outbox to another store (memory to IndexedDB once consent allows storing). */
  attach(store) {
    this.#chain = this.#chain.then(() => {
      this.#store = store
      return this.#load()
    })
    this.ready = this.#chain
    return this.ready
  }

  #persist(op) {
    const run = this.#chain.then(op)
    this.#chain = run.then(
      () => undefined,
      (error) => this.onError(new Error(`outbox store write failed: ${error?.message ?? error}`)),
    )
    return run.then(
      () => true,
      () => false,
    )
  }

  /**
   * Queues a message; resolves true once it is stored (durably where the store is).
   * @param {object} message a Segment message with a messageId
   * @param {{purposes?: string[], t: number}} meta
   */
  add(message, { purposes = [], t }) {
    const record = { id: message.messageId, t, seq: this.#seq++, purposes, message }
    this.records.push(record)
    this.#trim()
    const kept = () => this.records.includes(record)
    return this.#persist(() => (kept() ? this.#store.put([record]) : undefined)).then((ok) => ok && kept())
  }

  #trim() {
    while (this.records.length > this.maxSize) {
      const index = this.records.findIndex((r) => !this.#inFlight.has(r.id))
      if (index < 0) return
      const [oldest] = this.records.splice(index, 1)
      this.dropped += 1
      this.#persist(() => this.#store.delete([oldest.id]))
    }
  }

  /**
   * The oldest records not being sent, at most `count` and about `maxBytes` of JSON; they
   * are marked in flight until removed or released.
   */
  take(count, maxBytes = Infinity) {
    const out = []
    let bytes = 0
    for (const record of this.records) {
      if (out.length >= count) break
      if (this.#inFlight.has(record.id)) continue
      const size = JSON.stringify(record.message).length
      if (out.length && bytes + size > maxBytes) break
      bytes += size
      out.push(record)
      this.#inFlight.add(record.id)
    }
    return out
  }

  /** Puts records back to be sent again later. */
  release(records) {
    for (const record of records) this.#inFlight.delete(record.id)
  }

  /** Forgets records (sent, or refused for good). */
  remove(records) {
    const ids = new Set(records.map((r) => r.id))
    for (const id of ids) this.#inFlight.delete(id)
    this.records = this.records.filter((r) => !ids.has(r.id))
    return this.#persist(() => this.#store.delete([...ids]))
  }

  /** Removes every record that `predicate` selects (in flight or not); how many. */
  purge(predicate) {
    const gone = this.records.filter(predicate)
    if (gone.length) this.remove(gone)
    return gone.length
  }

  /** Resolves when every store write queued so far has finished. */
  settled() {
    return this.#chain
  }
}
