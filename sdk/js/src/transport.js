// Sending batches: POST /v1/batch with HTTP Basic auth, and sendBeacon for pages that are
// going away. A send answers what the outbox should do with the batch:
//   {outcome: 'sent', rejected}   done; rejected lists the messages the server refused
//   {outcome: 'retry', retryAfterMs?}  keep it and try again later (network, 5xx, 429)
//   {outcome: 'split'}            the request as a whole was refused (400, 413): send halves
//   {outcome: 'refused', reason}  a single message the server will never take

const encoder = new TextEncoder()

/** Basic credentials: the write key as user name, an empty password. */
export function basicAuth(writeKey) {
  const bytes = encoder.encode(`${writeKey}:`)
  return `Basic ${btoa(String.fromCharCode(...bytes))}`
}

/** Milliseconds a Retry-After header asks for (seconds, or an HTTP date), if any. */
export function retryAfterMs(header, now) {
  if (!header) return undefined
  const seconds = Number(header)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(header)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

/** The request body of a batch; the write key rides along for clients that cannot set headers. */
export function batchBody(messages, { writeKey, sentAt }) {
  return JSON.stringify({ batch: messages, sentAt, writeKey })
}

export class HttpTransport {
  /**
   * @param {{host: string, writeKey: string, fetch: typeof fetch, clock: import('./clock.js').Clock, timeoutMs?: number}} options
   */
  constructor({ host, writeKey, fetch, clock, timeoutMs = 15000 }) {
    this.url = `${host}/v1/batch`
    this.writeKey = writeKey
    this.fetch = fetch
    this.clock = clock
    this.timeoutMs = timeoutMs
  }

  async send(messages) {
    const now = this.clock.now()
    const abort = new AbortController()
    const timer = this.clock.setTimeout(() => abort.abort(), this.timeoutMs)
    let response
    try {
      response = await this.fetch(this.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: basicAuth(this.writeKey) },
        body: batchBody(messages, { writeKey: this.writeKey, sentAt: new Date(now).toISOString() }),
        credentials: 'omit',
        signal: abort.signal,
      })
    } catch (error) {
      return { outcome: 'retry', error }
    } finally {
      this.clock.clearTimeout(timer)
    }
    const body = await response.json().catch(() => ({}))
    const status = response.status
    if (status >= 200 && status < 300) return { outcome: 'sent', rejected: body.rejected ?? [] }
    const reason = `${status} ${body.code ?? ''}: ${body.message ?? ''}`.trim()
    if (status === 429 || status >= 500 || status === 401 || status === 403 || status === 408) {
      return { outcome: 'retry', retryAfterMs: retryAfterMs(response.headers.get('retry-after'), now), reason, auth: status === 401 || status === 403 }
    }
    return messages.length > 1 ? { outcome: 'split', reason } : { outcome: 'refused', reason }
  }
}

/**
 * Hands messages to `navigator.sendBeacon` in bodies of at most `maxBytes` (browsers refuse
 * larger beacons). The body is text/plain, which needs no CORS preflight, with the write key
 * in it (a beacon cannot set headers). Returns the messages the browser took; it stops at the
 * first beacon refused, and a message too large for any beacon waits for a normal flush.
 */
export function sendBeacons(sendBeacon, url, messages, { writeKey, sentAt, maxBytes = 60000 }) {
  const tail = `],"sentAt":${JSON.stringify(sentAt)},"writeKey":${JSON.stringify(writeKey)}}`
  const overhead = '{"batch":['.length + tail.length
  const taken = []
  let parts = []
  let group = []
  let size = overhead
  const send = () => {
    if (!group.length) return true
    if (!sendBeacon(url, new Blob([`{"batch":[${parts.join(',')}${tail}`], { type: 'text/plain;charset=UTF-8' }))) return false
    taken.push(...group)
    parts = []
    group = []
    size = overhead
    return true
  }
  for (const message of messages) {
    const json = JSON.stringify(message)
    const bytes = encoder.encode(json).length
    if (overhead + bytes > maxBytes) continue
    if (size + bytes + 1 > maxBytes && !send()) return taken
    parts.push(json)
    group.push(message)
    size += bytes + 1
  }
  send()
  return taken
}
