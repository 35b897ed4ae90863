// Delivery of the queue: batches by size and time, one request at a time, retries with
// backoff (Retry-After honoured), and a message the server refuses never blocks the rest.
// Delivery is at least once: a batch that may or may not have arrived is sent again with
// the same message ids, and the server drops the duplicates.

import { backoff } from './clock.js'

export class Outbox {
  sent = 0
  rejected = 0
  #timer = null
  #retryTimer = null
  #attempt = 0
  #running = null
  #again = false

  /**
   * @param {object} options
   * @param {import('./queue.js').Queue} options.queue
   * @param {() => {send(messages: object[]): Promise<any>}} options.transport the transport to use now
   * @param {import('./clock.js').Clock} options.clock
   * @param {number} [options.flushAt] messages that trigger a flush
   * @param {number} [options.flushIntervalMs] longest wait before queued messages are sent
   * @param {number} [options.maxBatchBytes]
   * @param {number} [options.retryBaseMs]
   * @param {number} [options.retryMaxMs]
   * @param {(rejected: object[]) => void} [options.onRejected]
   * @param {(error: Error) => void} [options.onError]
   */
  constructor({ queue, transport, clock, flushAt = 64, flushIntervalMs = 5000, maxBatchBytes = 480000,
    retryBaseMs = 1000, retryMaxMs = 300000, onRejected = () => {}, onError = () => {} }) {
    Object.assign(this, { queue, transport, clock, flushAt, flushIntervalMs, maxBatchBytes, retryBaseMs, retryMaxMs, onRejected, onError })
  }

  /** True while a failed send waits for its retry. */
  get backingOff() {
    return this.#retryTimer !== null
  }

  /** Called after each message is queued: flush now when the batch is full, else soon. */
  schedule() {
    if (this.backingOff) return
    if (this.queue.size >= this.flushAt) {
      this.flush().catch(this.onError)
    } else if (this.#timer === null) {
      this.#timer = this.clock.setTimeout(() => {
        this.#timer = null
        this.flush().catch(this.onError)
      }, this.flushIntervalMs)
    }
  }

  /** Sends everything queued; resolves when the queue is empty or a send must be retried. */
  flush() {
    if (this.#running) {
      this.#again = true
      return this.#running
    }
    if (this.#timer !== null) {
      this.clock.clearTimeout(this.#timer)
      this.#timer = null
    }
    this.#running = this.#drain().finally(() => {
      this.#running = null
      if (this.#again) {
        this.#again = false
        if (!this.backingOff && this.queue.size) this.schedule()
      }
    })
    return this.#running
  }

  async #drain() {
    if (this.#retryTimer !== null) {
      this.clock.clearTimeout(this.#retryTimer)
      this.#retryTimer = null
    }
    await this.queue.ready
    for (;;) {
      const batch = this.queue.take(this.flushAt, this.maxBatchBytes)
      if (!batch.length) return
      const retry = await this.#send(batch)
      if (retry) {
        this.#retryLater(retry)
        return
      }
      this.#attempt = 0
    }
  }

  /** Sends one batch (halving it when the request as a whole is refused); a retry, or null. */
  async #send(batch) {
    let result
    try {
      result = await this.transport().send(batch.map((r) => r.message))
    } catch (error) {
      result = { outcome: 'retry', error }
    }
    if (result.outcome === 'retry') {
      this.queue.release(batch)
      return result
    }
    if (result.outcome === 'split' && batch.length === 1) result = { outcome: 'refused', reason: result.reason }
    if (result.outcome === 'split') {
      const half = Math.ceil(batch.length / 2)
      this.queue.release(batch.slice(half))
      const retry = await this.#send(batch.slice(0, half))
      if (retry) {
        this.queue.release(batch.slice(half))
        return retry
      }
      return null // the drain loop takes the second half next
    }
    const rejected = result.outcome === 'refused'
      ? batch.map((r) => ({ messageId: r.id, code: 'refused', reason: result.reason }))
      : result.rejected ?? []
    this.sent += batch.length - rejected.length
    this.rejected += rejected.length
    await this.queue.remove(batch)
    if (rejected.length) this.onRejected(rejected)
    return null
  }

  #retryLater(result) {
    const wait = backoff(this.#attempt, { baseMs: this.retryBaseMs, maxMs: this.retryMaxMs })
    this.#attempt += 1
    const delay = result.auth ? this.retryMaxMs : Math.max(wait, result.retryAfterMs ?? 0)
    if (result.reason || result.error) {
      this.onError(new Error(`sending events failed (${result.reason ?? result.error?.message ?? result.error}); retrying in ${delay} ms`))
    }
    this.#retryTimer = this.clock.setTimeout(() => {
      this.#retryTimer = null
      this.flush().catch(this.onError)
    }, delay)
  }

  /** Stops the timers (the queue keeps what it holds). */
  stop() {
    for (const timer of [this.#timer, this.#retryTimer]) if (timer !== null) this.clock.clearTimeout(timer)
    this.#timer = this.#retryTimer = null
  }
}
