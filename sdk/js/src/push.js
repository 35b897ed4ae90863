// The push channel: a WebSocket to /v1/push on which the server pushes actions and decisions
// for placements in the world, and on which the client may also send its event batches.
// Frames are JSON text; the protocol is in README.md ("Push channel").
//
// It reconnects with exponential backoff and jitter. The server redelivers actions that were
// not acknowledged, so actions are deduplicated by id: a repeat of one already applied is
// acknowledged again and not applied twice; an expired action is acknowledged, not applied.

import { backoff } from './clock.js'

const FINAL_CLOSE_CODES = new Set([1008, 4001, 4003]) // the key was refused: retrying cannot help

/** The push URL for an http(s) host. */
export function pushUrl(host, key) {
  const base = host.replace(/^http(s?):\/\//i, (_, s) => `ws${s}://`)
  return `${base}/v1/push?key=${encodeURIComponent(key)}`
}

export class PushChannel {
  /** @type {WebSocket | null} */
  socket = null
  session = null
  welcomed = false
  #wanted = false
  #attempt = 0
  #reconnectTimer = null
  #heartbeatTimer = null
  #lastFrameAt = 0
  #heartbeatMs = 25000
  #nextId = 1
  /** @type {Map<number, {resolve: (r: any) => void, timer: unknown}>} */
  #pending = new Map()
  #done = new Map() // action id → true, recent first-in first-out
  #working = new Set()

  /**
   * @param {object} options
   * @param {string} options.url
   * @param {any} options.WebSocket constructor (the browser's, or `ws` in Node)
   * @param {import('./clock.js').Clock} options.clock
   * @param {() => object} options.hello the hello frame for now
   * @param {(action: object) => Promise<'applied' | 'pending'>} options.onAction
   * @param {(decision: object) => void} options.onDecision
   * @param {(state: string, detail?: any) => void} [options.onState]
   * @param {(error: Error) => void} [options.onError]
   */
  constructor({ url, WebSocket, clock, hello, onAction, onDecision, onState = () => {}, onError = () => {},
    reconnectBaseMs = 500, reconnectMaxMs = 30000, ackTimeoutMs = 10000, rememberActions = 1000, random = Math.random }) {
    Object.assign(this, { url, WebSocket, clock, hello, onAction, onDecision, onState, onError,
      reconnectBaseMs, reconnectMaxMs, ackTimeoutMs, rememberActions, random })
  }

  /** Open and welcomed: batches may be sent over it. */
  get ready() {
    return this.welcomed && this.socket?.readyState === 1
  }

  open() {
    this.#wanted = true
    if (!this.socket && this.#reconnectTimer === null) this.#connect()
  }

  close() {
    this.#wanted = false
    if (this.#reconnectTimer !== null) this.clock.clearTimeout(this.#reconnectTimer)
    this.#reconnectTimer = null
    const socket = this.socket
    this.#dropped()
    socket?.close(1000, 'closed by client')
  }

  #connect() {
    let socket
    try {
      socket = new this.WebSocket(this.url)
    } catch (error) {
      this.onError(error)
      this.#reconnect()
      return
    }
    this.socket = socket
    this.onState('connecting')
    socket.addEventListener('open', () => {
      if (this.socket !== socket) return
      this.#lastFrameAt = this.clock.now()
      this.#write(this.hello())
    })
    socket.addEventListener('message', (event) => {
      if (this.socket === socket) this.#receive(event.data)
    })
    socket.addEventListener('error', () => {}) // 'close' follows and decides
    socket.addEventListener('close', (event) => {
      if (this.socket !== socket) return
      this.#dropped()
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.#wanted = false
        this.onError(new Error(`push channel refused (${event.code} ${event.reason}); not reconnecting`))
        this.onState('refused', event)
        return
      }
      this.onState('disconnected', event)
      if (this.#wanted) this.#reconnect()
    })
  }

  #dropped() {
    this.socket = null
    this.welcomed = false
    if (this.#heartbeatTimer !== null) this.clock.clearTimeout(this.#heartbeatTimer)
    this.#heartbeatTimer = null
    for (const [id, { resolve, timer }] of this.#pending) {
      this.clock.clearTimeout(timer)
      resolve({ outcome: 'retry', reason: 'push channel closed' })
      this.#pending.delete(id)
    }
    this.#working.clear() // unacknowledged actions will be delivered again
  }

  #reconnect() {
    const delay = backoff(this.#attempt++, { baseMs: this.reconnectBaseMs, maxMs: this.reconnectMaxMs, random: this.random })
    this.#reconnectTimer = this.clock.setTimeout(() => {
      this.#reconnectTimer = null
      if (this.#wanted && !this.socket) this.#connect()
    }, delay)
  }

  #write(frame) {
    if (this.socket?.readyState !== 1) return false
    this.socket.send(JSON.stringify(frame))
    return true
  }

  /** Sends a hello again (after identify or a zone change). */
  sendHello() {
    this.#write(this.hello())
  }

  #receive(data) {
    this.#lastFrameAt = this.clock.now()
    let frame
    try {
      frame = JSON.parse(typeof data === 'string' ? data : String(data))
    } catch {
      this.onError(new Error('push channel: a frame was not JSON'))
      return
    }
    if (frame === null || typeof frame !== 'object') return
    if ('ack' in frame && frame.type === undefined) this.#batchAnswer(frame)
    else if (frame.type === 'welcome') this.#welcome(frame)
    else if (frame.type === 'action') this.#action(frame)
    else if (frame.type === 'decision') this.onDecision(frame)
    else if (frame.type === 'error') this.onError(new Error(`push channel: ${frame.code}: ${frame.message}`))
    // pong and unknown types only keep the connection alive
  }

  #welcome(frame) {
    this.session = frame.session ?? null
    this.welcomed = true
    this.#attempt = 0
    const seconds = Number(frame.heartbeat_s)
    this.#heartbeatMs = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 25000
    this.#heartbeat()
    this.onState('connected', frame)
  }

  #heartbeat() {
    this.#heartbeatTimer = this.clock.setTimeout(() => {
      this.#heartbeatTimer = null
      if (!this.socket) return
      if (this.clock.now() - this.#lastFrameAt > 2 * this.#heartbeatMs) {
        this.socket.close(4000, 'no answer to pings') // the close event reconnects
        return
      }
      this.#write({ type: 'ping' })
      this.#heartbeat()
    }, this.#heartbeatMs)
  }

  async #action(frame) {
    const id = frame.id
    if (typeof id !== 'string' || !id) return
    if (this.#done.has(id)) {
      this.ack(id)
      return
    }
    if (this.#working.has(id)) return
    const expires = frame.expires_at ? Date.parse(frame.expires_at) : NaN
    if (!Number.isNaN(expires) && expires <= this.clock.now()) {
      this.ack(id)
      return
    }
    this.#working.add(id)
    try {
      if ((await this.onAction(frame)) === 'applied') this.ack(id)
    } catch (error) {
      this.#working.delete(id) // not acknowledged: the server delivers it again
      this.onError(new Error(`push action ${id} failed: ${error?.message ?? error}`))
    }
  }

  /** Acknowledges an action once applied (or when it will never be). */
  ack(id) {
    this.#working.delete(id)
    this.#done.delete(id)
    this.#done.set(id, true)
    while (this.#done.size > this.rememberActions) this.#done.delete(this.#done.keys().next().value)
    this.#write({ type: 'ack', id })
  }

  /** The transport interface of the outbox: a batch over the socket, answered by its ack. */
  send(messages) {
    const id = this.#nextId++
    return new Promise((resolve) => {
      const timer = this.clock.setTimeout(() => {
        this.#pending.delete(id)
        resolve({ outcome: 'retry', reason: 'no ack on the push channel' })
      }, this.ackTimeoutMs)
      this.#pending.set(id, { resolve, timer })
      if (!this.#write({ id, batch: messages, sentAt: new Date(this.clock.now()).toISOString() })) {
        this.clock.clearTimeout(timer)
        this.#pending.delete(id)
        resolve({ outcome: 'retry', reason: 'push channel not open' })
      }
    })
  }

  #batchAnswer(frame) {
    const waiting = this.#pending.get(frame.ack)
    if (!waiting) return
    this.#pending.delete(frame.ack)
    this.clock.clearTimeout(waiting.timer)
    if (!frame.error) {
      waiting.resolve({ outcome: 'sent', rejected: frame.rejected ?? [] })
      return
    }
    const { code, message } = frame.error
    const reason = `${code}: ${message}`
    if (code === 'overloaded' || code === 'log_unavailable') {
      const retryAfterMs = Number.isFinite(frame.retry_after) ? frame.retry_after * 1000 : undefined
      waiting.resolve({ outcome: 'retry', retryAfterMs, reason })
    } else {
      waiting.resolve({ outcome: 'split', reason })
    }
  }
}
