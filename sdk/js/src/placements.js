// Placements: the places in the world where content changes (a billboard texture, an NPC's
// line). The app registers how content is applied to each; the SDK applies what decisions
// and pushed actions bring, remembers what each shows, and reports impressions.

/**
 * @typedef {object} Shown what a placement shows
 * @property {string} placement
 * @property {object} content
 * @property {string} [decisionId] when the content came from a decision
 * @property {string} [actionId] when it came from a pushed action
 * @property {object} [data]
 * @property {'decision' | 'action'} source
 */

/**
 * @callback PlacementHandler
 * @param {object} content the content to apply
 * @param {Shown} shown where it came from
 * @returns {void | Promise<void>}
 */

export class Placements {
  /** @type {Map<string, PlacementHandler>} */
  handlers = new Map()
  /** @type {Map<string, Shown>} */
  shown = new Map()
  /** @type {Map<string, Shown>} latest content for placements without a handler yet */
  waiting = new Map()

  /** @param {{onApplied: (shown: Shown) => void}} options */
  constructor({ onApplied }) {
    this.onApplied = onApplied
  }

  has(placement) {
    return this.handlers.has(placement)
  }

  /** Applies `shown` with its placement's handler; false when the placement has none yet. */
  async apply(shown) {
    const handler = this.handlers.get(shown.placement)
    if (!handler) return false
    await handler(shown.content, shown)
    this.shown.set(shown.placement, shown)
    this.onApplied(shown)
    return true
  }

  /** Keeps the latest content for a placement whose handler is not registered yet. */
  hold(shown) {
    this.waiting.set(shown.placement, shown)
  }

  /** Takes the content held for `placement`, if any. */
  release(placement) {
    const shown = this.waiting.get(placement)
    this.waiting.delete(placement)
    return shown
  }
}
