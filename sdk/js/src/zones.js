// Zones the visitor is in, with the time they entered, so exits carry their dwell. Entering
// a zone leaves the current one unless the call says the zones nest ({exclusive: false}).

import { zoneEntered, zoneExited, text } from './events.js'

export class Zones {
  /** @type {Map<string, {type?: string, enteredAt: number}>} */
  open = new Map()
  #last = undefined

  /** @param {import('./clock.js').Clock} clock */
  constructor(clock) {
    this.clock = clock
  }

  /** The zone entered last that is still open. */
  get current() {
    return [...this.open.keys()].at(-1)
  }

  /**
   * The events of entering `zone`: exits of the zones it replaces, then its entry.
   * @returns {[string, object][]}
   */
  enter(zone, { type, exclusive = true } = {}) {
    const zoneId = text(zone)
    if (!zoneId) throw new TypeError(`enterZone: zone must be a non-empty string, got ${JSON.stringify(zone)}`)
    if (this.open.has(zoneId)) return []
    const from = this.current ?? this.#last
    const events = exclusive ? [...this.open.keys()].map((id) => this.#exit(id, zoneId)) : []
    this.open.set(zoneId, { type, enteredAt: this.clock.now() })
    events.push(['zone.entered', zoneEntered({ zoneId, zoneType: type, fromZone: from })])
    return events
  }

  /** @returns {[string, object][]} */
  exit(zone, { to } = {}) {
    const zoneId = text(zone)
    return zoneId && this.open.has(zoneId) ? [this.#exit(zoneId, text(to))] : []
  }

  /** @returns {[string, object][]} */
  exitAll() {
    return [...this.open.keys()].reverse().map((id) => this.#exit(id, undefined))
  }

  #exit(zoneId, toZone) {
    const { enteredAt } = this.open.get(zoneId)
    this.open.delete(zoneId)
    this.#last = zoneId
    return ['zone.exited', zoneExited({ zoneId, dwellMs: this.clock.now() - enteredAt, toZone })]
  }

  /** The zones open now, to re-enter in a new session. */
  snapshot() {
    return [...this.open].map(([id, { type }]) => ({ id, type }))
  }
}
