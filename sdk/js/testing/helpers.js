// Test doubles that stay real where it matters: a node:http collector and a ws server on
// loopback, a clock the tests drive, and a page (window, document, navigator, storage) made
// of EventTargets. When WORLDFLOW_SDK_RECORD names a file, every batch the servers and the
// beacon receive is appended to it (one JSON body a line) for the catalogue check in
// tests/sdk/test_js_sdk.py.

import { appendFileSync } from 'node:fs'
import http from 'node:http'
import { IDBFactory } from 'fake-indexeddb'
import { WebSocketServer, WebSocket } from 'ws'
import { Worldflow } from '../src/index.js'

export { WebSocket }

const RECORD = process.env.WORLDFLOW_SDK_RECORD

export function record(body) {
  if (RECORD && body && Array.isArray(body.batch)) appendFileSync(RECORD, JSON.stringify(body) + '\n')
}

/** Lets pending promise callbacks and I/O callbacks run. */
export async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve))
}

/** A clock whose time moves only when the test says so. */
export class FakeClock {
  #timers = new Map()
  #next = 1

  constructor(start = Date.UTC(2025, 4, 1, 12, 0, 0)) {
    this.time = start
  }

  now() {
    return this.time
  }

  setTimeout(fn, ms) {
    const id = this.#next++
    this.#timers.set(id, { fn, at: this.time + Math.max(0, ms ?? 0), id })
    return id
  }

  clearTimeout(id) {
    this.#timers.delete(id)
  }

  get pending() {
    return [...this.#timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b)
  }

  /** Moves time forward by `ms`, running each timer that falls due, in order. */
  async advance(ms) {
    const end = this.time + ms
    for (;;) {
      const due = [...this.#timers.values()].filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0]
      if (!due) break
      this.#timers.delete(due.id)
      this.time = Math.max(this.time, due.at)
      due.fn()
      await settle()
    }
    this.time = end
    await settle()
  }
}

class MemoryStorage {
  #items = new Map()
  get length() {
    return this.#items.size
  }
  key(i) {
    return [...this.#items.keys()][i] ?? null
  }
  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null
  }
  setItem(key, value) {
    this.#items.set(key, String(value))
  }
  removeItem(key) {
    this.#items.delete(key)
  }
  clear() {
    this.#items.clear()
  }
  keys() {
    return [...this.#items.keys()]
  }
}

/** A page: window and document that dispatch lifecycle events, a navigator with sendBeacon. */
export function fakePage({ beaconAccepts = () => true } = {}) {
  const window = new EventTarget()
  window.location = { href: 'https://shop.example/showroom?x=1', pathname: '/showroom', search: '?x=1' }
  const document = new EventTarget()
  document.visibilityState = 'visible'
  document.referrer = 'https://ref.example/'
  document.title = 'Showroom'
  const beacons = []
  const navigator = {
    userAgent: 'Mozilla/5.0 (test)',
    language: 'fr-FR',
    sendBeacon(url, blob) {
      if (!beaconAccepts(beacons.length)) return false
      beacons.push({ url, blob })
      return true
    },
  }
  const page = {
    window, document, navigator, beacons,
    storage: new MemoryStorage(),
    hide() {
      document.visibilityState = 'hidden'
      document.dispatchEvent(new Event('visibilitychange'))
    },
    show() {
      document.visibilityState = 'visible'
      document.dispatchEvent(new Event('visibilitychange'))
    },
    pagehide() {
      window.dispatchEvent(new Event('pagehide'))
    },
    async beaconBodies() {
      const bodies = []
      for (const { blob } of beacons) bodies.push(JSON.parse(await blob.text()))
      for (const body of bodies) record(body)
      return bodies
    },
  }
  return page
}

/** A real HTTP server on loopback that records each request and answers as told. */
export async function startCollector() {
  const requests = []
  const waiters = []
  const collector = {
    requests,
    /** (request) => {status, headers?, body} | 'hangup'; the default accepts every message */
    respond: (request) => ({ status: 200, body: { success: true, accepted: request.body?.batch?.length ?? 0, duplicates: 0 } }),
    /** Resolves once `count` requests have arrived in all. */
    received(count) {
      if (requests.length >= count) return Promise.resolve(requests)
      return new Promise((resolve) => waiters.push({ count, resolve }))
    },
    messages() {
      return requests.filter((r) => r.url === '/v1/batch').flatMap((r) => r.body.batch)
    },
  }
  const server = http.createServer((req, res) => {
    let raw = ''
    req.on('data', (chunk) => { raw += chunk })
    req.on('end', () => {
      let body = null
      try {
        body = JSON.parse(raw)
      } catch {
        body = raw
      }
      const request = { method: req.method, url: req.url, headers: req.headers, body }
      requests.push(request)
      if (req.url === '/v1/batch') record(body)
      const answer = collector.respond(request)
      if (answer === 'hangup') {
        req.socket.destroy()
      } else {
        res.writeHead(answer.status, { 'Content-Type': 'application/json', ...answer.headers })
        res.end(JSON.stringify(answer.body ?? {}))
      }
      for (const waiter of [...waiters]) {
        if (requests.length >= waiter.count) {
          waiters.splice(waiters.indexOf(waiter), 1)
          waiter.resolve(requests)
        }
      }
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  collector.url = `http://127.0.0.1:${server.address().port}`
  collector.close = () => new Promise((resolve) => {
    server.closeAllConnections()
    server.close(resolve)
  })
  return collector
}

/** A real WebSocket server for /v1/push: records frames per connection. */
export async function startPushServer({ onConnection = () => {} } = {}) {
  const connections = []
  const waiters = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  wss.on('connection', (socket, request) => {
    const connection = { socket, url: request.url, frames: [], frameWaiters: [] }
    connection.send = (frame) => socket.send(JSON.stringify(frame))
    connection.next = (predicate = () => true) => {
      const found = connection.frames.find((f) => predicate(f) && !f.taken)
      if (found) {
        found.taken = true
        return Promise.resolve(found)
      }
      return new Promise((resolve) => connection.frameWaiters.push({ predicate, resolve }))
    }
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data))
      if (Array.isArray(frame.batch)) record(frame)
      connection.frames.push(frame)
      for (const waiter of [...connection.frameWaiters]) {
        if (waiter.predicate(frame) && !frame.taken) {
          frame.taken = true
          connection.frameWaiters.splice(connection.frameWaiters.indexOf(waiter), 1)
          waiter.resolve(frame)
        }
      }
    })
    connections.push(connection)
    onConnection(connection)
    for (const waiter of [...waiters]) {
      if (connections.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1)
        waiter.resolve(connection)
      }
    }
  })
  await new Promise((resolve) => wss.on('listening', resolve))
  return {
    connections,
    url: `http://127.0.0.1:${wss.address().port}`,
    /** Resolves with the `count`-th connection once it is open. */
    connection(count) {
      if (connections.length >= count) return Promise.resolve(connections[count - 1])
      return new Promise((resolve) => waiters.push({ count, resolve }))
    },
    close: () => new Promise((resolve) => {
      for (const client of wss.clients) client.terminate()
      wss.close(resolve)
    }),
  }
}

/** Worldflow on a fake page and clock, a fresh fake IndexedDB, talking to `host`. */
export function makeSdk(host, options = {}) {
  const page = options.page ?? fakePage()
  const clock = options.clock ?? new FakeClock()
  const errors = []
  const wf = Worldflow.init({
    host,
    writeKey: 'wk_test',
    world: 'paris-showroom',
    clock,
    window: page.window,
    document: page.document,
    navigator: page.navigator,
    storage: page.storage,
    indexedDB: options.indexedDB === undefined ? new IDBFactory() : options.indexedDB,
    WebSocket,
    onError: (e) => errors.push(e),
    ...options,
  })
  return { wf, page, clock, errors }
}

export const tracks = (messages, name) => messages.filter((m) => m.type === 'track' && (!name || m.event === name))
