// The decide API: what a placement should show this visitor now. Prefetched decisions are
// kept for a short time, so a render frame can take one without waiting on the network.

import { basicAuth } from './transport.js'

/**
 * @typedef {object} Decision
 * @property {string} decision_id
 * @property {string} placement
 * @property {object} content
 * @property {string} [strategy]
 * @property {boolean} [fallback]
 */

export class Decisions {
  /** @type {Map<string, {decision: Decision, until: number}>} */
  #cache = new Map()

  /**
   * @param {{host: string, writeKey: string, fetch: typeof fetch, clock: import('./clock.js').Clock,
   *   ttlMs?: number, timeoutMs?: number}} options
   */
  constructor({ host, writeKey, fetch, clock, ttlMs = 60000, timeoutMs = 2000 }) {
    this.url = `${host}/v1/decide`
    Object.assign(this, { writeKey, fetch, clock, ttlMs, timeoutMs })
  }

  /**
   * Asks the server; the decision, or null when there is none (network, error answer).
   * @param {object} body {placement, anonymousId, userId, context}
   * @returns {Promise<Decision | null>}
   */
  async request(body) {
    const abort = new AbortController()
    const timer = this.clock.setTimeout(() => abort.abort(), this.timeoutMs)
    try {
      const response = await this.fetch(this.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: basicAuth(this.writeKey) },
        body: JSON.stringify(body),
        credentials: 'omit',
        signal: abort.signal,
      })
      if (!response.ok) throw new Error(`decide ${body.placement}: HTTP ${response.status}`)
      const decision = await response.json()
      if (!decision || typeof decision !== 'object' || typeof decision.decision_id !== 'string') {
        throw new Error(`decide ${body.placement}: the answer has no decision_id`)
      }
      return { ...decision, placement: decision.placement ?? body.placement }
    } finally {
      this.clock.clearTimeout(timer)
    }
  }

  remember(decision) {
    this.#cache.set(decision.placement, { decision, until: this.clock.now() + this.ttlMs })
  }

  /** A fresh prefetched decision for `placement`, or null; `take` also forgets it. */
  cached(placement, { take = false } = {}) {
    const entry = this.#cache.get(placement)
    if (!entry) return null
    if (entry.until <= this.clock.now() || take) this.#cache.delete(placement)
    return entry.until > this.clock.now() ? entry.decision : null
  }

  clear() {
    this.#cache.clear()
  }
}
