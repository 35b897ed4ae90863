import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import { makeSdk, settle, startCollector, tracks } from '../testing/helpers.js'

let collector
beforeEach(async () => { collector = await startCollector() })
afterEach(async () => { await collector.close() })

const accept = (r) => ({ status: 200, body: { success: true, accepted: r.body.batch.length, duplicates: 0 } })

test('a batch is a Segment batch with Basic auth, the write key, message ids and context', async () => {
  const { wf } = makeSdk(collector.url, { consent: { analytics: true }, appVersion: '1.4.0' })
  await wf.track('object.selected', { obj: { object_id: 'sneaker-1' }, input: 'mouse' })
  await wf.flush()
  const [request] = collector.requests
  assert.equal(request.method, 'POST')
  assert.equal(request.url, '/v1/batch')
  assert.equal(request.headers.authorization, `Basic ${Buffer.from('wk_test:').toString('base64')}`)
  assert.equal(request.headers['content-type'], 'application/json')
  assert.equal(request.body.writeKey, 'wk_test')
  assert.equal(request.body.sentAt, '2025-05-01T12:00:00.000Z')
  const selected = tracks(request.body.batch, 'object.selected')[0]
  assert.match(selected.messageId, /^[0-9a-f-]{36}$/)
  assert.equal(selected.type, 'track')
  assert.equal(selected.originalTimestamp, '2025-05-01T12:00:00.000Z')
  assert.equal(selected.timestamp, selected.originalTimestamp)
  assert.ok(selected.anonymousId)
  assert.deepEqual(selected.context.library, { name: 'worldflow-js', version: '0.1.0' })
  assert.deepEqual(selected.context.world, { id: 'paris-showroom' })
  assert.equal(selected.context.userAgent, 'Mozilla/5.0 (test)')
  assert.equal(selected.context.locale, 'fr-FR')
  assert.equal(typeof selected.context.timezone, 'string')
  assert.deepEqual(selected.context.page, { url: 'https://shop.example/showroom?x=1', path: '/showroom', search: '?x=1', referrer: 'https://ref.example/', title: 'Showroom' })
  assert.equal(tracks(request.body.batch, 'session.started')[0].properties.app_version, '1.4.0')
  await wf.close()
})

test('messages are sent when the batch is full, or when the interval passes', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, flushAt: 5, flushIntervalMs: 4000 })
  await wf.track('custom.one')
  await settle()
  assert.equal(collector.requests.length, 0, 'three queued messages wait')
  await clock.advance(3999)
  assert.equal(collector.requests.length, 0)
  await clock.advance(1)
  await collector.received(1)
  assert.equal(collector.requests[0].body.batch.length, 3)

  for (let i = 0; i < 5; i++) wf.track('custom.many', { i })
  await collector.received(2)
  assert.equal(collector.requests[1].body.batch.length, 5, 'a full batch goes at once')
  await wf.close()
})

test('5xx, 429 and network failures are retried with backoff, honouring Retry-After, same ids', async () => {
  const answers = [
    { status: 503, headers: { 'Retry-After': '7' }, body: { code: 'log_unavailable', message: 'x' } },
    'hangup',
    { status: 429, headers: { 'Retry-After': '30' }, body: { code: 'overloaded', message: 'slow down' } },
  ]
  collector.respond = (r) => answers.shift() ?? accept(r)
  const { wf, clock, errors } = makeSdk(collector.url, { consent: { analytics: true }, retryBaseMs: 1000 })
  await wf.track('custom.event')
  await wf.flush()
  assert.equal(collector.requests.length, 1)
  assert.ok(wf.outbox.backingOff)
  await clock.advance(6999)
  assert.equal(collector.requests.length, 1, 'Retry-After: 7 is honoured')
  await clock.advance(1)
  await collector.received(2) // the connection is cut: retried after a backoff of 1-2 s
  await settle(20)
  await clock.advance(2000)
  await collector.received(3)
  await settle(20)
  const wait = clock.pending.find((ms) => ms > 28_000 && ms <= 30_000) // Retry-After: 30, not 2-4 s
  assert.ok(wait, `pending timers: ${clock.pending}`)
  await clock.advance(wait - 1)
  assert.equal(collector.requests.length, 3)
  await clock.advance(1)
  await collector.received(4)
  await settle(20)
  const ids = collector.requests.map((r) => r.body.batch.map((m) => m.messageId).join())
  assert.equal(new Set(ids).size, 1, 'every retry carries the same message ids')
  assert.notEqual(collector.requests[0].body.sentAt, collector.requests[3].body.sentAt, 'sentAt is the time of each send')
  assert.equal(wf.stats().queued, 0)
  assert.equal(wf.stats().sent, 3)
  assert.ok(errors.length >= 3)
  await wf.close()
})

test('a message the server rejects does not block the queue', async () => {
  collector.respond = (r) => {
    const index = r.body.batch.findIndex((m) => m.event === 'custom.bad')
    const rejected = index < 0 ? [] : [{ index, messageId: r.body.batch[index].messageId, code: 'invalid_properties', reason: 'x', errors: [] }]
    return { status: 200, body: { success: true, accepted: r.body.batch.length - rejected.length, duplicates: 0, rejected } }
  }
  const { wf } = makeSdk(collector.url, { consent: { analytics: true } })
  const seen = []
  wf.on('rejected', (rejected) => seen.push(...rejected))
  await wf.track('custom.bad')
  await wf.track('custom.good')
  await wf.flush()
  assert.equal(seen.length, 1)
  assert.equal(seen[0].code, 'invalid_properties')
  assert.deepEqual(wf.stats(), { queued: 0, dropped: 0, sent: 3, rejected: 1, droppedNoConsent: 0, oversized: 0 })
  await wf.track('custom.after')
  await wf.flush()
  assert.equal(collector.requests.length, 2)
  await wf.close()
})

test('a batch refused as a whole is halved until the one bad message is found and dropped', async () => {
  collector.respond = (r) => (r.body.batch.some((m) => m.properties?.poison)
    ? { status: 400, body: { code: 'invalid_batch', message: 'no' } }
    : accept(r))
  const { wf } = makeSdk(collector.url, { consent: { analytics: true } })
  for (let i = 0; i < 6; i++) wf.track('custom.n', { i, poison: i === 4 ? true : undefined })
  await wf.flush()
  const delivered = collector.requests.filter((r) => r.headers && r.body.batch.every((m) => !m.properties?.poison))
    .flatMap((r) => r.body.batch.map((m) => m.properties.i ?? m.event))
  assert.deepEqual(delivered.filter((x) => typeof x === 'number').sort(), [0, 1, 2, 3, 5])
  assert.equal(wf.stats().queued, 0)
  assert.equal(wf.stats().rejected, 1)
  await wf.close()
})

test('the queue is bounded: the oldest are dropped and counted in session.ended', async () => {
  collector.respond = () => 'hangup'
  const { wf, page } = makeSdk(collector.url, { consent: { analytics: true }, maxQueueSize: 10, flushAt: 1000 })
  for (let i = 0; i < 25; i++) await wf.track('custom.n', { i })
  assert.equal(wf.stats().queued, 10)
  assert.equal(wf.stats().dropped, 17) // consent.updated, session.started and 15 events
  page.pagehide()
  const bodies = await page.beaconBodies()
  const messages = bodies.flatMap((b) => b.batch)
  assert.equal(tracks(messages, 'custom.n')[0].properties.i, 16)
  const ended = tracks(messages, 'session.ended')[0]
  assert.equal(ended.properties.reason, 'quit')
  assert.ok(ended.properties.events_dropped >= 17)
  await wf.close()
})

test('when the page is hidden, the queue goes out by sendBeacon with the write key in the body', async () => {
  const { wf, page } = makeSdk(collector.url, { consent: { analytics: true } })
  await wf.enterZone('lobby', { type: 'lobby' })
  page.hide()
  assert.equal(page.beacons.length, 1)
  assert.equal(page.beacons[0].url, `${collector.url}/v1/batch`)
  assert.equal(page.beacons[0].blob.type, 'text/plain;charset=utf-8')
  const [body] = await page.beaconBodies()
  assert.equal(body.writeKey, 'wk_test')
  assert.deepEqual(body.batch.map((m) => m.event), ['consent.updated', 'session.started', 'zone.entered'])
  assert.equal(wf.stats().queued, 0)
  await wf.flush()
  assert.equal(collector.requests.length, 0, 'what the beacon took is not sent again')
  await wf.close()
})

test('pagehide ends attention, zones and the session, then beacons in bodies under 64 KB', async () => {
  const { wf, page, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  await wf.enterZone('stage', { type: 'stage' })
  for (let i = 0; i < 300; i++) wf.track('custom.big', { i, padding: 'x'.repeat(400) })
  await clock.advance(1234)
  page.pagehide()
  assert.ok(page.beacons.length >= 2)
  const bodies = await page.beaconBodies()
  for (const { blob } of page.beacons) assert.ok(blob.size <= 60000, `${blob.size} bytes`)
  const messages = bodies.flatMap((b) => b.batch)
  assert.equal(tracks(messages, 'custom.big').length, 300)
  const exited = tracks(messages, 'zone.exited')[0]
  assert.deepEqual(exited.properties, { zone_id: 'stage', dwell_ms: 1234 })
  const ended = tracks(messages, 'session.ended')[0]
  assert.deepEqual(ended.properties, { duration_ms: 1234, reason: 'quit', events_dropped: 0 })
  assert.ok(messages.indexOf(exited) < messages.indexOf(ended))
  await wf.close()
})

test('a beacon the browser refuses leaves the rest queued for the next page', async () => {
  const { fakePage } = await import('../testing/helpers.js')
  const page = fakePage({ beaconAccepts: () => false })
  const { wf } = makeSdk(collector.url, { page, consent: { analytics: true } })
  await wf.track('custom.kept')
  page.pagehide()
  assert.equal(wf.stats().queued, 4)
  await wf.close()
})
