import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import { IDBFactory } from 'fake-indexeddb'
import { purposesFor } from '../src/index.js'
import { IndexedDBStore } from '../src/stores.js'
import { makeSdk, settle, startCollector, tracks } from '../testing/helpers.js'

let collector
beforeEach(async () => { collector = await startCollector() })
afterEach(async () => { await collector.close() })

test('nothing is collected, stored or sent before analytics consent', async () => {
  const idb = new IDBFactory()
  const { wf, page, clock } = makeSdk(collector.url, { indexedDB: idb })
  assert.equal(await wf.track('zone.entered', { zone_id: 'lobby' }), false)
  assert.equal(await wf.enterZone('lobby'), false)
  assert.equal(await wf.identify('user-1', { plan: 'gold' }), false)
  await clock.advance(60_000)
  page.hide()
  page.pagehide()
  await settle()
  assert.deepEqual(collector.requests, [])
  assert.deepEqual(page.beacons, [])
  assert.deepEqual(page.storage.keys(), [])
  assert.deepEqual(await idb.databases(), [], 'no IndexedDB database is created')
  assert.equal(wf.stats().droppedNoConsent, 3)
  assert.equal(wf.stats().queued, 0)
  await wf.close()
})

test('granting analytics sends consent.updated with every purpose, then session.started', async () => {
  const { wf, page, clock } = makeSdk(collector.url, { policyVersion: '2025-05' })
  assert.equal(wf.consentKnown, false, 'never asked: the page shows its banner')
  await wf.consent({ analytics: true, personalisation: true })
  assert.equal(wf.consentKnown, true)
  await wf.track('zone.entered', { zone_id: 'lobby' })
  await wf.flush()
  const [consent, started, zone] = collector.messages()
  assert.equal(consent.event, 'consent.updated')
  assert.deepEqual(consent.properties, {
    scopes: { analytics: true, personalisation: true, marketing_contact: false, gaze: false, motion: false, voice: false },
    policy_version: '2025-05',
    source: 'ui',
  })
  assert.equal(started.event, 'session.started')
  assert.deepEqual(started.properties, { entry_point: 'direct' })
  assert.equal(zone.event, 'zone.entered')
  assert.equal(zone.context.session_id, started.context.session_id)
  assert.match(started.context.session_id, /^[0-9a-f]{8}-[0-9a-f]{4}-7/)
  assert.equal(page.storage.getItem('worldflow.anonymousId'), consent.anonymousId)
  assert.deepEqual(JSON.parse(page.storage.getItem('worldflow.consent')).analytics, true)
  await wf.close()
  const next = makeSdk(collector.url, { page })
  assert.equal(next.wf.consentKnown, true, 'the next visit remembers the choices')
  assert.equal(next.wf.consents.personalisation, true)
  await next.wf.close()
  void clock
})

test('the same choices given again at init send no second consent.updated', async () => {
  const first = makeSdk(collector.url, { consent: { analytics: true } })
  await first.wf.flush()
  await first.wf.close()
  const again = makeSdk(collector.url, { page: first.page, consent: { analytics: true } })
  await again.wf.flush()
  await again.wf.close()
  const names = tracks(collector.messages()).map((m) => m.event)
  assert.deepEqual(names, ['consent.updated', 'session.started', 'session.started'])
  const ids = new Set(collector.messages().map((m) => m.anonymousId))
  assert.equal(ids.size, 1, 'the anonymous id persists across visits')
})

test('revoking analytics purges queued events, sends the withdrawal and forgets the ids', async () => {
  const { wf, page } = makeSdk(collector.url, { consent: { analytics: true } })
  await wf.track('zone.entered', { zone_id: 'lobby' })
  await wf.track('object.selected', { obj: { object_id: 'sneaker' } })
  const purged = []
  wf.on('purged', (detail) => purged.push(detail))
  await wf.consent({ analytics: false })
  await wf.flush()
  const names = tracks(collector.messages()).map((m) => [m.event, m.properties.scopes?.analytics])
  // The grant stays (the server keeps the last choice by time); what it allowed is purged.
  assert.deepEqual(names, [['consent.updated', true], ['consent.updated', false]])
  assert.deepEqual(purged, [{ purposes: ['analytics'], count: 3 }]) // session.started and 2 events
  assert.equal(page.storage.getItem('worldflow.anonymousId'), null)
  assert.equal(await wf.track('zone.entered', { zone_id: 'stage' }), false)
  await wf.close()
})

test('eye gaze needs the gaze purpose; raw telemetry is never sent by default', async () => {
  assert.deepEqual(purposesFor('object.gaze_dwell', { source: 'head' }), ['analytics'])
  assert.deepEqual(purposesFor('object.gaze_dwell', { source: 'eye' }), ['analytics', 'gaze'])
  assert.equal(purposesFor('telemetry.pose_batch', {}), null)
  assert.deepEqual(purposesFor('telemetry.pose_batch', {}, { rawTelemetry: true }), ['analytics', 'motion'])
  assert.deepEqual(purposesFor('consent.updated', {}), [])

  const { wf } = makeSdk(collector.url, { consent: { analytics: true, motion: true, gaze: true } })
  const obj = { object_id: 'sneaker' }
  assert.equal(await wf.track('telemetry.pose_batch', { interval_ms: 100, samples: [] }), false)
  assert.equal(await wf.track('object.gaze_dwell', { obj, source: 'eye', dwell_ms: 900 }), true)
  await wf.consent({ gaze: false })
  assert.equal(await wf.track('object.gaze_dwell', { obj, source: 'eye', dwell_ms: 900 }), false)
  assert.equal(await wf.track('object.gaze_dwell', { obj, source: 'head', dwell_ms: 900 }), true)
  await wf.flush()
  const gaze = tracks(collector.messages(), 'object.gaze_dwell').map((m) => m.properties.source)
  assert.deepEqual(gaze, ['head'], 'the eye dwell queued before the revocation was purged')
  await wf.close()
})

test('events queued in IndexedDB survive a reload and are sent by the next page', async () => {
  const idb = new IDBFactory()
  collector.respond = () => ({ status: 503, headers: { 'Retry-After': '3600' }, body: {} })
  const first = makeSdk(collector.url, { indexedDB: idb, consent: { analytics: true } })
  await first.wf.track('zone.entered', { zone_id: 'lobby' })
  await first.wf.flush()
  await first.wf.close()
  const stored = await new IndexedDBStore(idb, 'worldflow:wk_test').getAll()
  assert.equal(stored.length, 3)

  collector.respond = (r) => ({ status: 200, body: { success: true, accepted: r.body.batch.length, duplicates: 0 } })
  const before = collector.requests.length
  const second = makeSdk(collector.url, { indexedDB: idb, page: first.page })
  await second.wf.flush()
  const resent = collector.requests.slice(before).flatMap((r) => r.body.batch).map((m) => m.messageId)
  for (const record of stored) assert.ok(resent.includes(record.id), `${record.message.event} was sent again`)
  await second.wf.close()
  assert.equal((await new IndexedDBStore(idb, 'worldflow:wk_test').getAll()).length, 0)
})
