// Sessions: one starts at the first activity once analytics is granted and ends after an
// idle timeout (30 minutes by default), when the page goes away, when the page was hidden
// for longer than the timeout, or when the app ends it (an XR session ending, say).

import { uuid7 } from './ids.js'

/**
 * @typedef {object} Session
 * @property {string} id UUIDv7
 * @property {number} startedAt
 * @property {number} lastActivity
 */

export class Sessions {
  /** @type {Session | null} */
  current = null
  #timer = null
  #hiddenAt = null

  /**
   * @param {{clock: import('./clock.js').Clock, idleTimeoutMs?: number,
   *   onStart: (s: Session) => void, onEnd: (s: Session, reason: string, at: number) => void}} options
   */
  constructor({ clock, idleTimeoutMs = 30 * 60 * 1000, onStart, onEnd }) {
    Object.assign(this, { clock, idleTimeoutMs, onStart, onEnd })
  }

  /** Activity: starts a session if none is open, and pushes the idle timeout back. */
  touch() {
    const now = this.clock.now()
    if (!this.current) {
      this.current = { id: uuid7(now), startedAt: now, lastActivity: now }
      this.onStart(this.current)
    }
    this.current.lastActivity = now
    this.#arm()
  }

  #arm() {
    if (this.#timer !== null) this.clock.clearTimeout(this.#timer)
    this.#timer = this.clock.setTimeout(() => {
      this.#timer = null
      if (!this.current) return
      const idle = this.clock.now() - this.current.lastActivity
      if (idle < this.idleTimeoutMs) this.#arm()
      else if (this.#hiddenAt !== null) this.end('background', this.#hiddenAt)
      else this.end('timeout')
    }, this.idleTimeoutMs)
  }

  /** Ends the open session, if any. */
  end(reason, at = this.clock.now()) {
    const session = this.current
    if (!session) return
    if (this.#timer !== null) this.clock.clearTimeout(this.#timer)
    this.#timer = null
    this.onEnd(session, reason, at)
    this.current = null
  }

  /** Forgets the open session without recording its end (consent was withdrawn). */
  drop() {
    this.stop()
    this.current = null
  }

  stop() {
    if (this.#timer !== null) this.clock.clearTimeout(this.#timer)
    this.#timer = null
  }

  hidden() {
    this.#hiddenAt = this.clock.now()
  }

  /** Back from hidden: a session hidden for longer than the idle timeout ended then. */
  visible() {
    const hiddenAt = this.#hiddenAt
    this.#hiddenAt = null
    if (hiddenAt !== null && this.current && this.clock.now() - hiddenAt >= this.idleTimeoutMs) {
      this.end('background', hiddenAt)
    }
  }
}
