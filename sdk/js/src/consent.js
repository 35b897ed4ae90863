// Consent first: which purposes the visitor granted, and which purposes an event needs.
//
// Every event needs `analytics`, except the records of the choices themselves
// (consent.updated) and privacy requests. Eye-tracked gaze dwell also needs `gaze` (the
// catalogue raises it to tier 2 with that purpose); raw pose and gaze sample batches
// (tier 3) need `motion` or `gaze` and, on top, the `rawTelemetry` option: they are never
// sent by default.

import { PURPOSES } from './events.js'

const ESSENTIAL = new Set(['consent.updated', 'privacy.requested'])

/**
 * The purposes an event needs before it may be collected; null when it may never be.
 * @param {string} name
 * @param {object} properties
 * @param {{rawTelemetry?: boolean}} options
 * @returns {string[] | null}
 */
export function purposesFor(name, properties, { rawTelemetry = false } = {}) {
  if (ESSENTIAL.has(name)) return []
  if (name === 'telemetry.pose_batch') return rawTelemetry ? ['analytics', 'motion'] : null
  if (name === 'telemetry.gaze_batch') return rawTelemetry ? ['analytics', 'gaze'] : null
  if (name.startsWith('telemetry.')) return rawTelemetry ? ['analytics', 'motion', 'gaze'] : null
  if (name === 'object.gaze_dwell' && properties?.source === 'eye') return ['analytics', 'gaze']
  return ['analytics']
}

export class Consent {
  /** @type {Record<string, boolean>} */
  scopes = Object.fromEntries(PURPOSES.map((p) => [p, false]))
  /** True once choices were made (given at init, stored, or set by the visitor). */
  known = false

  /** @param {Record<string, boolean> | null} [initial] */
  constructor(initial) {
    if (initial) this.update(initial)
  }

  /** @param {string} purpose */
  granted(purpose) {
    return this.scopes[purpose] === true
  }

  /** @param {string[]} purposes */
  allows(purposes) {
    return purposes.every((p) => this.granted(p))
  }

  /**
   * Merges new choices (purposes not named keep theirs).
   * @param {Record<string, unknown>} choices
   * @returns {{changed: boolean, granted: string[], revoked: string[]}}
   */
  update(choices) {
    const granted = []
    const revoked = []
    for (const [purpose, value] of Object.entries(choices ?? {})) {
      if (typeof value !== 'boolean') continue
      const before = this.scopes[purpose] === true
      this.scopes[purpose] = value
      if (value && !before) granted.push(purpose)
      if (!value && before) revoked.push(purpose)
    }
    const changed = !this.known || granted.length > 0 || revoked.length > 0
    this.known = true
    return { changed, granted, revoked }
  }
}
