import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import { makeSdk, startCollector, tracks } from '../testing/helpers.js'

let collector
beforeEach(async () => { collector = await startCollector() })
afterEach(async () => { await collector.close() })

const MIN = 60_000

test('30 idle minutes end the session (timeout); the next activity starts another', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  await clock.advance(10 * MIN)
  await wf.track('custom.active')
  await clock.advance(29 * MIN)
  await wf.flush()
  assert.deepEqual(tracks(collector.messages(), 'session.ended'), [])
  await clock.advance(1 * MIN)
  await wf.flush()
  const [ended] = tracks(collector.messages(), 'session.ended')
  assert.deepEqual(ended.properties, { duration_ms: 10 * MIN, reason: 'timeout', events_dropped: 0 })
  await wf.track('custom.back')
  await wf.flush()
  const started = tracks(collector.messages(), 'session.started')
  assert.equal(started.length, 2)
  assert.notEqual(started[0].context.session_id, started[1].context.session_id)
  assert.equal(tracks(collector.messages(), 'custom.back')[0].context.session_id, started[1].context.session_id)
  await wf.close()
})

test('a page hidden longer than the idle timeout ended its session when it was hidden', async () => {
  const { wf, page, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  await clock.advance(5 * MIN)
  page.hide()
  await clock.advance(45 * MIN)
  page.show()
  await wf.flush()
  const messages = [...(await page.beaconBodies()).flatMap((b) => b.batch), ...collector.messages()]
  const [ended] = tracks(messages, 'session.ended')
  assert.equal(ended.properties.reason, 'background')
  assert.equal(ended.originalTimestamp, new Date(Date.UTC(2025, 4, 1, 12, 5)).toISOString())
  assert.equal(tracks(messages, 'session.started').length, 2)
  await wf.close()
})

test('a short absence keeps the session', async () => {
  const { wf, page, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  page.hide()
  await clock.advance(2 * MIN)
  page.show()
  await wf.flush()
  assert.equal(tracks(collector.messages(), 'session.ended').length, 0)
  await wf.close()
})

test('identify names the visitor on later events; reset ends the session and the identity', async () => {
  const { wf, page } = makeSdk(collector.url, { consent: { analytics: true } })
  const anonymous = wf.anonymousId
  await wf.identify('user-42', { plan: 'gold' })
  await wf.track('custom.after_login')
  wf.reset()
  await wf.track('custom.after_logout')
  await wf.flush()
  const messages = collector.messages()
  const identify = messages.find((m) => m.type === 'identify')
  assert.deepEqual([identify.userId, identify.anonymousId, identify.traits], ['user-42', anonymous, { plan: 'gold' }])
  assert.equal(tracks(messages, 'custom.after_login')[0].userId, 'user-42')
  const ended = tracks(messages, 'session.ended')[0]
  assert.equal(ended.userId, 'user-42')
  const after = tracks(messages, 'custom.after_logout')[0]
  assert.equal(after.userId, undefined)
  assert.notEqual(after.anonymousId, anonymous)
  assert.equal(page.storage.getItem('worldflow.anonymousId'), after.anonymousId)
  assert.equal(page.storage.getItem('worldflow.userId'), null)
  await wf.close()
})

test('endSession records the reason the app gives (an XR session ending)', async () => {
  const { wf } = makeSdk(collector.url, { consent: { analytics: true } })
  wf.endSession('xr_end')
  await wf.flush()
  assert.equal(tracks(collector.messages(), 'session.ended')[0].properties.reason, 'xr_end')
  await wf.close()
})

test('zones: entries and exits with dwell, from and to, and the zone in context', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  await wf.enterZone('lobby', { type: 'lobby' })
  await clock.advance(4000)
  await wf.track('custom.in_lobby')
  await clock.advance(1000)
  await wf.enterZone('sneaker-booth', { type: 'booth' })
  await clock.advance(2500)
  await wf.enterZone('vip-corner', { type: 'not-a-catalogue-type', exclusive: false })
  await clock.advance(500)
  await wf.exitZone('vip-corner', { to: 'sneaker-booth' })
  await wf.exitZone('sneaker-booth')
  await wf.flush()
  const zones = collector.messages().filter((m) => m.event?.startsWith('zone.')).map((m) => [m.event, m.properties])
  assert.deepEqual(zones, [
    ['zone.entered', { zone_id: 'lobby', zone_type: 'lobby' }],
    ['zone.exited', { zone_id: 'lobby', dwell_ms: 5000, to_zone: 'sneaker-booth' }],
    ['zone.entered', { zone_id: 'sneaker-booth', zone_type: 'booth', from_zone: 'lobby' }],
    ['zone.entered', { zone_id: 'vip-corner', from_zone: 'sneaker-booth' }],
    ['zone.exited', { zone_id: 'vip-corner', dwell_ms: 500, to_zone: 'sneaker-booth' }],
    ['zone.exited', { zone_id: 'sneaker-booth', dwell_ms: 3000 }],
  ])
  assert.equal(tracks(collector.messages(), 'custom.in_lobby')[0].context.zone, 'lobby')
  assert.throws(() => wf.enterZone(''), /zone must be a non-empty string/)
  await wf.close()
})

test('zones open when a session times out are entered again in the next session', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true } })
  await wf.enterZone('lobby', { type: 'lobby' })
  await clock.advance(31 * MIN)
  await wf.track('custom.back')
  await wf.flush()
  const names = tracks(collector.messages()).map((m) => m.event)
  assert.deepEqual(names, ['consent.updated', 'session.started', 'zone.entered', 'zone.exited', 'session.ended',
    'session.started', 'zone.entered', 'custom.back'])
  await wf.close()
})
