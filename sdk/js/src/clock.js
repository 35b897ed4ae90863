// The SDK reads time and schedules work only through a clock, so tests can drive it.

/**
 * @typedef {object} Clock
 * @property {() => number} now milliseconds since the epoch
 * @property {(fn: () => void, ms: number) => unknown} setTimeout
 * @property {(handle: unknown) => void} clearTimeout
 */

/** @type {Clock} */
export const systemClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(/** @type {any} */ (handle)),
}

/**
 * Exponential backoff with jitter: between half and all of `base * 2^attempt`, capped at `max`.
 * @param {number} attempt 0 for the first retry
 * @param {{baseMs: number, maxMs: number, random?: () => number}} policy
 */
export function backoff(attempt, { baseMs, maxMs, random = Math.random }) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30))
  return Math.round(ceiling / 2 + (random() * ceiling) / 2)
}
