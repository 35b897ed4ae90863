// Where the outbox keeps its records: IndexedDB in browsers, memory elsewhere. A store holds
// plain records keyed by `id` (the message id) and knows nothing of their meaning.

/**
 * @typedef {object} OutboxStore
 * @property {() => Promise<object[]>} getAll
 * @property {(records: object[]) => Promise<void>} put
 * @property {(ids: string[]) => Promise<void>} delete
 * @property {boolean} durable
 */

/** @implements {OutboxStore} */
export class MemoryStore {
  durable = false
  #records = new Map()

  async getAll() {
    return [...this.#records.values()]
  }

  async put(records) {
    for (const record of records) this.#records.set(record.id, record)
  }

  async delete(ids) {
    for (const id of ids) this.#records.delete(id)
  }
}

/** @param {IDBRequest | IDBOpenDBRequest} request */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
}

/** @implements {OutboxStore} */
export class IndexedDBStore {
  durable = true
  #db

  /**
   * @param {IDBFactory} indexedDB
   * @param {string} name database name (one outbox per source)
   */
  constructor(indexedDB, name) {
    const request = indexedDB.open(name, 1)
    request.onupgradeneeded = () => request.result.createObjectStore('outbox', { keyPath: 'id' })
    this.#db = done(request)
  }

  async #write(fn) {
    const db = await this.#db
    const tx = db.transaction('outbox', 'readwrite')
    fn(tx.objectStore('outbox'))
    await new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve(undefined)
      tx.onerror = () => reject(tx.error)
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'))
    })
  }

  async getAll() {
    const db = await this.#db
    return done(db.transaction('outbox', 'readonly').objectStore('outbox').getAll())
  }

  async put(records) {
    if (records.length) await this.#write((store) => records.forEach((r) => store.put(r)))
  }

  async delete(ids) {
    if (ids.length) await this.#write((store) => ids.forEach((id) => store.delete(id)))
  }

  async close() {
    ;(await this.#db).close()
  }
}
