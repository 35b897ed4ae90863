// The SDK's one object: it composes consent, identity, sessions, zones, the outbox, the push
// channel, decisions and attention trackers, and owns the rules that join them. Each part
// lives in a module of its own; this file says how an event goes from a call to the queue.

import { AttentionTracker } from './attention.js'
import { systemClock } from './clock.js'
import { Consent, purposesFor } from './consent.js'
import { Decisions } from './decide.js'
import { consentUpdated, contentImpression, contentInteracted, PRIVACY_KINDS, sessionEnded, sessionStarted } from './events.js'
import { uuid4 } from './ids.js'
import { watchLifecycle } from './lifecycle.js'
import { Outbox } from './outbox.js'
import { Placements } from './placements.js'
import { PushChannel, pushUrl } from './push.js'
import { Queue } from './queue.js'
import { KeyValue } from './storage.js'
import { Sessions } from './session.js'
import { IndexedDBStore } from './stores.js'
import { HttpTransport, sendBeacons } from './transport.js'
import { Zones } from './zones.js'

export const VERSION = '0.1.0'
export const LIBRARY = 'worldflow-js'

/** Segment's limit per message; the server quarantines larger ones. */
const MAX_MESSAGE_BYTES = 32000

function required(options, name) {
  const value = options?.[name]
  if (typeof value !== 'string' || !value) {
    throw new TypeError(`Worldflow.init: option ${name} must be a non-empty string, got ${JSON.stringify(value)}`)
  }
  return value
}

export class Worldflow {
  #listeners = new Map()
  #trackers = new Set()
  #actionHandlers = new Set()
  #waitingActions = new Map() // action id → frame, until a handler can apply it
  #wantPush = false
  #reenter = []
  #droppedAtStart = 0
  #stats = { droppedNoConsent: 0, oversized: 0 }
  #unwatch
  #anonymousId = null
  #userId = null
  #idsLoaded = false

  /**
   * Starts the SDK. Nothing is collected or stored until `analytics` is granted, either in
   * `options.consent`, in the choice remembered from an earlier visit, or by `consent()`.
   * @param {import('./index.js').WorldflowOptions} options
   */
  static init(options) {
    return new Worldflow(options)
  }

  /** @param {import('./index.js').WorldflowOptions} options */
  constructor(options) {
    this.host = required(options, 'host').replace(/\/+$/, '')
    this.writeKey = required(options, 'writeKey')
    this.world = required(options, 'world')
    this.options = options
    const env = globalThis
    this.clock = options.clock ?? systemClock
    this.window = options.window === undefined ? env.window : options.window
    this.document = options.document === undefined ? env.document : options.document
    this.navigator = options.navigator === undefined ? env.navigator : options.navigator
    this.indexedDB = options.indexedDB === undefined ? env.indexedDB : options.indexedDB
    const fetch = options.fetch ?? env.fetch?.bind(env)
    const storage = options.storage === undefined ? this.#localStorage() : options.storage
    this.kv = new KeyValue(storage, options.storagePrefix ?? 'worldflow.')

    this.consentState = new Consent(options.rememberConsent === false ? null : this.kv.getJSON('consent'))
    this.queue = new Queue({ maxSize: options.maxQueueSize ?? 1000, onError: (e) => this.#error(e) })
    this.http = new HttpTransport({ host: this.host, writeKey: this.writeKey, fetch, clock: this.clock })
    this.outbox = new Outbox({
      queue: this.queue,
      transport: () => (this.push?.ready && options.eventsOverPush !== false ? this.push : this.http),
      clock: this.clock,
      flushAt: options.flushAt,
      flushIntervalMs: options.flushIntervalMs,
      retryBaseMs: options.retryBaseMs,
      retryMaxMs: options.retryMaxMs,
      onRejected: (rejected) => this.#emitLocal('rejected', rejected),
      onError: (e) => this.#error(e),
    })
    this.sessions = new Sessions({
      clock: this.clock,
      idleTimeoutMs: options.sessionTimeoutMs,
      onStart: (session) => this.#sessionStarted(session),
      onEnd: (session, reason, at) => this.#sessionEnded(session, reason, at),
    })
    this.zones = new Zones(this.clock)
    this.placements = new Placements({ onApplied: (shown) => this.track('content.impression', contentImpression(shown)) })
    this.decisions = new Decisions({ host: this.host, writeKey: this.writeKey, fetch, clock: this.clock,
      ttlMs: options.decisionTtlMs, timeoutMs: options.decideTimeoutMs })
    this.push = null
    this.#unwatch = watchLifecycle({
      window: this.window,
      document: this.document,
      onHidden: () => this.#hidden(),
      onVisible: () => this.#visible(),
      onPageHide: () => this.#pageHide(),
      onPageShow: () => this.#pageShow(),
    })

    if (this.consentState.granted('analytics')) this.#startCollecting()
    if (options.consent) this.consent(options.consent, { source: options.consentSource })
  }

  #localStorage() {
    try {
      return globalThis.localStorage ?? null
    } catch {
      return null // access denied (sandboxed frames, some private modes)
    }
  }

  // --- identity ------------------------------------------------------------------------------

  /** The visitor's anonymous id: stored across visits once analytics is granted. */
  get anonymousId() {
    this.#anonymousId ??= uuid4()
    return this.#anonymousId
  }

  get userId() {
    return this.#userId
  }

  /** Takes the ids an earlier visit stored (once, when collection starts). */
  #loadIds() {
    if (this.#idsLoaded) return
    this.#idsLoaded = true
    this.#anonymousId = this.kv.get('anonymousId') ?? this.#anonymousId
    this.#userId = this.kv.get('userId') ?? this.#userId
  }

  #persistIds() {
    this.kv.set('anonymousId', this.anonymousId)
    if (this.userId) this.kv.set('userId', this.userId)
    else this.kv.remove('userId')
  }

  #forgetIds() {
    this.kv.remove('anonymousId')
    this.kv.remove('userId')
  }

  /**
   * Names the visitor (after a login, say) and sends an identify call with `traits`.
   * @param {string} userId
   * @param {object} [traits]
   */
  identify(userId, traits = {}) {
    if (!this.consentState.granted('analytics')) return this.#refuse()
    this.#userId = userId ? String(userId) : null
    this.#persistIds()
    this.sessions.touch()
    const sent = this.#enqueue(this.#message('identify', { traits }), ['analytics'])
    this.push?.sendHello()
    return sent
  }

  /** Forgets who the visitor is (a logout): ends the session, then a new anonymous id. */
  reset() {
    this.sessions.end('quit')
    this.#reenter = []
    this.#userId = null
    this.#anonymousId = uuid4()
    if (this.consentState.granted('analytics')) this.#persistIds()
    this.decisions.clear()
    this.push?.sendHello()
  }

  // --- consent -------------------------------------------------------------------------------

  /**
   * Sets consent choices (purposes not named keep theirs) and sends `consent.updated` when
   * they changed. Granting `analytics` starts collection; revoking a purpose stops it and
   * purges the queued events that needed it.
   * @param {Record<string, boolean>} choices
   * @param {{policyVersion?: string, source?: 'ui' | 'platform' | 'gpc'}} [details]
   */
  consent(choices, { policyVersion = this.options.policyVersion, source = 'ui' } = {}) {
    const hadAnalytics = this.consentState.granted('analytics')
    const { changed, granted, revoked } = this.consentState.update(choices)
    if (this.options.rememberConsent !== false) this.kv.setJSON('consent', this.consentState.scopes)
    if (!changed) return Promise.resolve(false)
    if (revoked.length) {
      const purged = this.queue.purge((r) => r.purposes.some((p) => revoked.includes(p)))
      if (purged) this.#emitLocal('purged', { purposes: revoked, count: purged })
    }
    if (revoked.includes('analytics')) this.#stopCollecting()
    const analytics = this.consentState.granted('analytics')
    let sent = Promise.resolve(false)
    // Recorded when collection is allowed, and when it is withdrawn (the server must learn it).
    if (analytics || hadAnalytics) {
      if (analytics && !hadAnalytics) this.#startCollecting({ touch: false })
      sent = this.#enqueue(this.#message('track', {
        event: 'consent.updated',
        properties: consentUpdated(this.consentState.scopes, { policyVersion, source }),
      }), [])
      if (analytics) this.sessions.touch()
      else {
        this.outbox.flush().catch((e) => this.#error(e))
        this.#forgetIds()
      }
    }
    if (granted.includes('personalisation') && this.#wantPush) this.connect()
    if (revoked.includes('personalisation')) {
      this.push?.close()
      this.decisions.clear()
    }
    return sent
  }

  #startCollecting({ touch = true } = {}) {
    if (this.indexedDB && !this.queue.durable) {
      this.queue.attach(new IndexedDBStore(this.indexedDB, this.options.queueName ?? `worldflow:${this.writeKey}`))
    }
    this.#loadIds()
    this.#persistIds()
    if (touch) this.sessions.touch()
  }

  #stopCollecting() {
    for (const tracker of this.#trackers) tracker.visits.clear()
    this.sessions.drop()
    this.zones.open.clear()
    this.#reenter = []
  }

  /** The visitor's current choices. */
  get consents() {
    return { ...this.consentState.scopes }
  }

  /** True once the visitor's choices are known (given at init, remembered, or just made). */
  get consentKnown() {
    return this.consentState.known
  }

  /**
   * Asks for the visitor's data to be erased, exported or restricted (`privacy.requested`).
   * An erase also forgets the local ids and purges what is queued.
   * @param {'erase' | 'export' | 'restrict'} kind
   */
  requestPrivacy(kind) {
    if (!PRIVACY_KINDS.includes(kind)) throw new TypeError(`requestPrivacy: kind must be one of ${PRIVACY_KINDS.join(', ')}`)
    if (kind === 'erase') this.queue.purge((r) => r.purposes.length > 0)
    const sent = this.#enqueue(this.#message('track', { event: 'privacy.requested', properties: { kind } }), [])
    this.outbox.flush().catch((e) => this.#error(e))
    if (kind === 'erase') {
      this.#stopCollecting()
      this.#forgetIds()
      this.#anonymousId = uuid4()
      this.#userId = null
    }
    return sent
  }

  // --- events --------------------------------------------------------------------------------

  /**
   * Records an event. Dropped (resolves false) when the consent it needs is missing;
   * otherwise resolves true once it is stored in the outbox.
   * @param {string} event a catalogue name (docs/CATALOGUE.md) or a custom one
   * @param {object} [properties]
   */
  track(event, properties = {}) {
    const purposes = purposesFor(event, properties, { rawTelemetry: this.options.rawTelemetry === true })
    if (purposes === null || !this.consentState.allows(purposes)) return this.#refuse()
    if (purposes.includes('analytics')) this.sessions.touch()
    return this.#enqueue(this.#message('track', { event, properties }), purposes)
  }

  /** Reports visitor activity (input, movement) that keeps the session open. */
  activity() {
    if (this.consentState.granted('analytics')) this.sessions.touch()
  }

  /** Ends the session now (an XR session ended, say); the next activity starts another. */
  endSession(reason = 'quit') {
    this.sessions.end(reason)
  }

  #refuse() {
    this.#stats.droppedNoConsent += 1
    return Promise.resolve(false)
  }

  /** Records an SDK event without counting it as activity. */
  #record(event, properties, at = this.clock.now()) {
    return this.#enqueue(this.#message('track', { event, properties }, at), ['analytics'])
  }

  #message(type, fields, at = this.clock.now()) {
    const time = new Date(at).toISOString()
    const message = { type, ...fields, messageId: uuid4(), anonymousId: this.anonymousId }
    if (this.userId) message.userId = this.userId
    message.timestamp = time
    message.originalTimestamp = time
    message.context = this.#context()
    return message
  }

  #context() {
    const nav = this.navigator
    const location = this.window?.location
    let timezone
    try {
      timezone = Intl.DateTimeFormat().resolvedOptions().timeZone
    } catch {
      timezone = undefined
    }
    const context = {
      library: { name: LIBRARY, version: VERSION },
      world: { id: this.world },
    }
    if (location?.href) {
      context.page = { url: location.href, path: location.pathname, search: location.search,
        referrer: this.document?.referrer ?? '', title: this.document?.title ?? '' }
    }
    if (nav?.userAgent) context.userAgent = nav.userAgent
    if (nav?.language) context.locale = nav.language
    if (timezone) context.timezone = timezone
    if (this.sessions.current) context.session_id = this.sessions.current.id
    if (this.zones.current) context.zone = this.zones.current
    return { ...this.options.context, ...context }
  }

  #enqueue(message, purposes) {
    if (JSON.stringify(message).length > MAX_MESSAGE_BYTES) {
      this.#stats.oversized += 1
      this.#error(new Error(`${message.event ?? message.type} is over ${MAX_MESSAGE_BYTES} bytes and was not sent`))
      return Promise.resolve(false)
    }
    const stored = this.queue.add(message, { purposes, t: this.clock.now() })
    this.outbox.schedule()
    return stored
  }

  /** Sends what is queued now; resolves when done or when a retry was scheduled. */
  flush() {
    return this.outbox.flush()
  }

  stats() {
    return { queued: this.queue.size, dropped: this.queue.dropped, sent: this.outbox.sent,
      rejected: this.outbox.rejected, ...this.#stats }
  }

  // --- sessions and zones ------------------------------------------------------------------

  /** @param {import('./session.js').Session} session */
  #sessionStarted(session) {
    this.#droppedAtStart = this.queue.dropped
    const o = this.options
    this.#record('session.started', sessionStarted({ entryPoint: o.entryPoint ?? 'direct', campaignId: o.campaignId,
      referrerWorld: o.referrerWorld, appVersion: o.appVersion }), session.startedAt)
    const zones = this.#reenter
    this.#reenter = []
    for (const { id, type } of zones) this.#emitAll(this.zones.enter(id, { type, exclusive: false }))
  }

  #sessionEnded(session, reason, at) {
    for (const tracker of this.#trackers) tracker.flush()
    this.#reenter = this.zones.snapshot()
    this.#emitAll(this.zones.exitAll())
    const end = reason === 'timeout' ? session.lastActivity : at
    this.#record('session.ended', sessionEnded({ durationMs: end - session.startedAt, reason,
      eventsDropped: this.queue.dropped - this.#droppedAtStart }), at)
  }

  #emitAll(events) {
    for (const [name, properties] of events) this.#record(name, properties)
  }

  /**
   * The visitor entered a zone (`zone.entered`); it leaves the current zone first unless
   * `exclusive` is false (nested zones).
   * @param {string} zone
   * @param {{type?: string, exclusive?: boolean}} [options] type: showroom, stage, lobby, checkout, booth, portal_hub
   */
  enterZone(zone, options = {}) {
    if (!this.consentState.granted('analytics')) return this.#refuse()
    this.sessions.touch()
    const events = this.zones.enter(zone, options)
    this.#emitAll(events)
    if (events.length) this.push?.sendHello()
    return Promise.resolve(events.length > 0)
  }

  /**
   * The visitor left a zone (`zone.exited` with its dwell).
   * @param {string} zone
   * @param {{to?: string}} [options]
   */
  exitZone(zone, options = {}) {
    if (!this.consentState.granted('analytics')) return this.#refuse()
    this.sessions.touch()
    const events = this.zones.exit(zone, options)
    this.#emitAll(events)
    if (events.length) this.push?.sendHello()
    return Promise.resolve(events.length > 0)
  }

  // --- attention -----------------------------------------------------------------------------

  /**
   * An attention tracker for a three.js scene; call its `update()` from the render loop.
   * @param {import('./index.js').AttentionOptions} options
   */
  attention(options) {
    const tracker = new AttentionTracker({
      THREE: this.options.THREE,
      ...options,
      clock: this.clock,
      active: () => this.consentState.granted('analytics'),
      gazeAllowed: (source) => source !== 'eye' || this.consentState.granted('gaze'),
      emit: (name, properties) => this.track(name, properties),
    })
    this.#trackers.add(tracker)
    const stop = tracker.stop.bind(tracker)
    tracker.stop = () => {
      stop()
      this.#trackers.delete(tracker)
    }
    return tracker
  }

  // --- placements, push and decisions --------------------------------------------------------

  /**
   * Registers how content is applied to a placement; returns a function that unregisters.
   * Content pushed or decided before the handler existed is applied now.
   * @param {string} id
   * @param {import('./placements.js').PlacementHandler} handler
   */
  placement(id, handler) {
    this.placements.handlers.set(id, handler)
    const held = this.placements.release(id)
    if (held) this.#applyShown(held)
    this.#retryWaitingActions()
    return () => {
      if (this.placements.handlers.get(id) === handler) this.placements.handlers.delete(id)
    }
  }

  /**
   * Handles pushed actions that no placement handler applies; returns a function that
   * unregisters.
   * @param {(action: object) => void | Promise<void>} handler
   */
  onAction(handler) {
    this.#actionHandlers.add(handler)
    this.#retryWaitingActions()
    return () => this.#actionHandlers.delete(handler)
  }

  /** What a placement shows now, if the SDK applied it. */
  shown(placement) {
    return this.placements.shown.get(placement) ?? null
  }

  /**
   * The visitor acted on a placement's content (`content.interacted`).
   * @param {string} placement
   * @param {'select' | 'play' | 'link'} [action]
   */
  interacted(placement, action = 'select') {
    const shown = this.placements.shown.get(placement) ?? { placement }
    return this.track('content.interacted', contentInteracted(shown, action))
  }

  async #applyShown(shown) {
    try {
      const applied = await this.placements.apply(shown)
      if (applied && shown.actionId) this.push?.ack(shown.actionId)
      if (!applied) this.placements.hold(shown)
    } catch (error) {
      this.#error(new Error(`placement ${shown.placement}: ${error?.message ?? error}`))
    }
  }

  async #deliverAction(frame) {
    // An action a journey asked to be decided carries its decision's id (attribution).
    const shown = { placement: frame.placement, content: frame.content ?? {}, data: frame.data ?? {},
      actionId: frame.id, decisionId: frame.decision_id, source: 'action' }
    if (frame.placement) {
      if (!this.placements.has(frame.placement)) return this.#wait(frame)
      await this.placements.apply(shown)
      return 'applied'
    }
    if (this.#actionHandlers.size) {
      for (const handler of this.#actionHandlers) await handler(frame)
      return 'applied'
    }
    return this.#wait(frame)
  }

  /** Keeps an action until a handler that can apply it is registered. */
  #wait(frame) {
    this.#waitingActions.set(frame.id, frame)
    return 'pending'
  }

  #retryWaitingActions() {
    for (const [id, frame] of this.#waitingActions) {
      const ready = frame.placement ? this.placements.has(frame.placement) : this.#actionHandlers.size > 0
      if (!ready) continue
      this.#waitingActions.delete(id)
      this.#deliverAction(frame).then(
        (state) => state === 'applied' && this.push?.ack(id),
        (error) => this.#error(new Error(`push action ${id} failed: ${error?.message ?? error}`)),
      )
    }
  }

  #hello() {
    const frame = { type: 'hello', world: this.world, anonymousId: this.anonymousId }
    if (this.userId) frame.userId = this.userId
    frame.zone = this.zones.current ?? null
    return frame
  }

  /**
   * Opens the push channel (once `personalisation` is granted; until then it waits).
   * @returns {PushChannel | null}
   */
  connect() {
    this.#wantPush = true
    if (!this.consentState.granted('personalisation')) return null
    const WebSocket = this.options.WebSocket ?? globalThis.WebSocket
    if (!WebSocket) throw new TypeError('connect: no WebSocket here; pass options.WebSocket')
    this.push ??= new PushChannel({
      url: pushUrl(this.host, this.options.worldKey ?? this.writeKey),
      WebSocket,
      clock: this.clock,
      hello: () => this.#hello(),
      onAction: (frame) => this.#deliverAction(frame),
      onDecision: (frame) => this.#applyShown({ placement: frame.placement, content: frame.content ?? {},
        decisionId: frame.decision_id, source: 'decision' }),
      onState: (state, detail) => {
        this.#emitLocal(state, detail)
        if (state === 'connected' && this.queue.size) this.outbox.schedule()
      },
      onError: (e) => this.#error(e),
      reconnectBaseMs: this.options.reconnectBaseMs,
      reconnectMaxMs: this.options.reconnectMaxMs,
    })
    this.push.open()
    return this.push
  }

  disconnect() {
    this.#wantPush = false
    this.push?.close()
  }

  /**
   * What `placement` should show this visitor: `{decision_id, placement, content, strategy,
   * fallback}`, or null (no personalisation consent, network, error answer).
   * @param {string} placement
   * @param {object} [context] merged into the request's context (after world and zone)
   */
  async decide(placement, context = {}) {
    if (!this.consentState.granted('personalisation')) return null
    const body = { placement, anonymousId: this.anonymousId,
      context: { world: this.world, zone: this.zones.current ?? null, ...context } }
    if (this.userId) body.userId = this.userId
    try {
      return await this.decisions.request(body)
    } catch (error) {
      this.#error(error)
      return null
    }
  }

  /** Fetches and keeps decisions for `placements` for a short time (decisionTtlMs). */
  async prefetch(placements, context = {}) {
    const decisions = await Promise.all(placements.map((p) => this.decide(p, context)))
    for (const decision of decisions) if (decision) this.decisions.remember(decision)
    return decisions
  }

  /** A prefetched decision still fresh, without waiting; null when there is none. */
  cached(placement) {
    return this.decisions.cached(placement)
  }

  /**
   * Shows the decided content in a placement: a prefetched decision if fresh (used once),
   * else a new one; applies it with the placement's handler, which sends content.impression.
   */
  async show(placement, context = {}) {
    const decision = this.decisions.cached(placement, { take: true }) ?? (await this.decide(placement, context))
    if (decision) {
      await this.#applyShown({ placement, content: decision.content ?? {}, decisionId: decision.decision_id, source: 'decision' })
    }
    return decision
  }

  // --- lifecycle ------------------------------------------------------------------------------

  #hidden() {
    for (const tracker of this.#trackers) tracker.flush()
    this.sessions.hidden()
    this.beacon()
  }

  #visible() {
    this.sessions.visible()
    this.activity()
  }

  #pageHide() {
    if (this.consentState.granted('analytics')) this.sessions.end('quit')
    this.beacon()
    this.push?.close() // reopened if the page comes back from the back-forward cache
  }

  #pageShow() {
    this.activity()
    if (this.#wantPush) this.connect()
  }

  /**
   * Hands everything queued to `navigator.sendBeacon` (the page is being hidden or left).
   * Falls back to a normal flush where there is no sendBeacon.
   */
  beacon() {
    const sendBeacon = this.navigator?.sendBeacon?.bind(this.navigator)
    if (!sendBeacon) {
      this.outbox.flush().catch((e) => this.#error(e))
      return 0
    }
    const records = [...this.queue.records]
    if (!records.length) return 0
    const byMessage = new Map(records.map((r) => [r.message, r]))
    const taken = sendBeacons(sendBeacon, this.http.url, records.map((r) => r.message),
      { writeKey: this.writeKey, sentAt: new Date(this.clock.now()).toISOString() })
    this.queue.remove(taken.map((m) => byMessage.get(m)))
    return taken.length
  }

  /** Stops timers, trackers, listeners and the push channel (what is queued stays stored). */
  async close() {
    for (const tracker of [...this.#trackers]) tracker.stop()
    this.#unwatch()
    this.disconnect()
    this.outbox.stop()
    this.sessions.stop()
    await this.queue.settled()
  }

  // --- local events -------------------------------------------------------------------------

  /**
   * Listens to the SDK: 'error', 'rejected' (messages the server refused), 'purged',
   * 'connected', 'disconnected', 'refused' (the push key). Returns a function that unlistens.
   */
  on(name, handler) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set())
    this.#listeners.get(name).add(handler)
    return () => this.#listeners.get(name)?.delete(handler)
  }

  #emitLocal(name, detail) {
    for (const handler of this.#listeners.get(name) ?? []) {
      try {
        handler(detail)
      } catch {
        // a listener's failure is its own
      }
    }
  }

  #error(error) {
    this.options.onError?.(error)
    this.#emitLocal('error', error)
  }
}
