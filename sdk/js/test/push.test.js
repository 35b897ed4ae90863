import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import { pushUrl } from '../src/index.js'
import { makeSdk, settle, startCollector, startPushServer, tracks } from '../testing/helpers.js'

let push
let collector
beforeEach(async () => {
  push = await startPushServer()
  collector = await startCollector()
})
afterEach(async () => {
  await push.close()
  await collector.close()
})

const consent = { analytics: true, personalisation: true }

async function connected(options = {}) {
  const sdk = makeSdk(push.url, { consent, worldKey: 'wk_world', ...options })
  sdk.wf.connect()
  const connection = await push.connection(options.nth ?? 1)
  const hello = await connection.next((f) => f.type === 'hello')
  connection.send({ type: 'welcome', session: 'ps_1', heartbeat_s: 25 })
  await settle(10)
  return { ...sdk, connection, hello }
}

test('the push URL is the host as ws/wss with the world key', () => {
  assert.equal(pushUrl('https://wf.example/base', 'k y'), 'wss://wf.example/base/v1/push?key=k%20y')
  assert.equal(pushUrl('http://127.0.0.1:8000', 'k'), 'ws://127.0.0.1:8000/v1/push?key=k')
})

test('hello right after open, and again after identify and a zone change', async () => {
  const { wf, connection, hello } = await connected()
  assert.equal(connection.url, '/v1/push?key=wk_world')
  assert.deepEqual(hello, { type: 'hello', world: 'paris-showroom', anonymousId: wf.anonymousId, zone: null, taken: true })
  await wf.identify('user-7')
  const second = await connection.next((f) => f.type === 'hello')
  assert.equal(second.userId, 'user-7')
  await wf.enterZone('lobby', { type: 'lobby' })
  const third = await connection.next((f) => f.type === 'hello')
  assert.equal(third.zone, 'lobby')
  await wf.close()
})

test('no personalisation consent: connect waits, and opens once it is granted', async () => {
  const { wf } = makeSdk(push.url, { consent: { analytics: true } })
  assert.equal(wf.connect(), null)
  await settle(20)
  assert.equal(push.connections.length, 0)
  wf.consent({ personalisation: true })
  const connection = await push.connection(1)
  assert.equal((await connection.next()).type, 'hello')
  await wf.close()
})

test('an action is applied by its placement handler, acknowledged, and sends content.impression', async () => {
  const { wf, connection } = await connected()
  const applied = []
  wf.placement('lobby-billboard', (content, shown) => { applied.push([content, shown.actionId]) })
  connection.send({ type: 'action', id: 'iw_1', placement: 'lobby-billboard',
    content: { creative_id: 'cr-9', texture: 'https://cdn.example/a.png' }, expires_at: null, data: { campaign_id: 'spring' } })
  assert.deepEqual(await connection.next((f) => f.type === 'ack'), { type: 'ack', id: 'iw_1', taken: true })
  assert.deepEqual(applied, [[{ creative_id: 'cr-9', texture: 'https://cdn.example/a.png' }, 'iw_1']])
  wf.flush()
  const batch = await connection.next((f) => Array.isArray(f.batch) && f.batch.some((m) => m.event === 'content.impression'))
  const impression = tracks(batch.batch, 'content.impression')[0]
  assert.deepEqual(impression.properties, { placement_id: 'lobby-billboard', creative_id: 'cr-9', campaign_id: 'spring' })
  assert.equal(wf.shown('lobby-billboard').actionId, 'iw_1')
  await wf.close()
})

test('a decided action carries its decision id into the impression', async () => {
  const { wf, connection } = await connected()
  wf.placement('gallery-screen', () => {})
  connection.send({ type: 'action', id: 'iw_2', placement: 'gallery-screen', decision_id: 'dc_7', offer: 'parka',
    content: { type: 'text', text: 'Parkas -20 %', creative_id: 'parka' }, expires_at: null, data: { placement: 'gallery-screen', decide: true } })
  await connection.next((f) => f.type === 'ack')
  wf.flush()
  const batch = await connection.next((f) => Array.isArray(f.batch) && f.batch.some((m) => m.event === 'content.impression'))
  assert.deepEqual(tracks(batch.batch, 'content.impression')[0].properties,
    { placement_id: 'gallery-screen', creative_id: 'parka', decision_id: 'dc_7' })
  assert.equal(wf.shown('gallery-screen').decisionId, 'dc_7')
  await wf.close()
})

test('events go over the socket as {id, batch} and are done when the server acks them', async () => {
  const { wf, connection } = await connected()
  await wf.track('custom.over_socket')
  const flushing = wf.flush()
  const frame = await connection.next((f) => Array.isArray(f.batch))
  assert.equal(typeof frame.id, 'number')
  assert.ok(frame.sentAt)
  const ids = frame.batch.map((m) => m.messageId)
  connection.send({ ack: frame.id, accepted: ids, duplicates: [], rejected: [] })
  await flushing
  await settle()
  assert.equal(wf.stats().queued, 0)
  assert.equal(collector.requests.length, 0)
  await wf.close()
})

test('after a reconnect, redelivered actions are acknowledged again but applied once; expired ones are not applied', async () => {
  const { wf, connection, clock } = await connected({ reconnectBaseMs: 500 })
  const applied = []
  wf.placement('npc-greeter', (content) => { applied.push(content.line) })
  connection.send({ type: 'action', id: 'iw_a', placement: 'npc-greeter', content: { line: 'Bonjour !' }, expires_at: null })
  await connection.next((f) => f.type === 'ack' && f.id === 'iw_a')
  connection.socket.close(1011, 'restart')
  await settle(20)
  assert.equal(push.connections.length, 1, 'waits for the backoff')
  await clock.advance(500)
  const again = await push.connection(2)
  await again.next((f) => f.type === 'hello')
  again.send({ type: 'welcome', session: 'ps_2', heartbeat_s: 25 })
  again.send({ type: 'action', id: 'iw_a', placement: 'npc-greeter', content: { line: 'Bonjour !' }, expires_at: null })
  const past = new Date(clock.now() - 1000).toISOString()
  again.send({ type: 'action', id: 'iw_old', placement: 'npc-greeter', content: { line: 'too late' }, expires_at: past })
  assert.deepEqual((await again.next((f) => f.type === 'ack' && f.id === 'iw_a')).id, 'iw_a')
  assert.deepEqual((await again.next((f) => f.type === 'ack' && f.id === 'iw_old')).id, 'iw_old')
  assert.deepEqual(applied, ['Bonjour !'])
  await wf.close()
})

test('an action for a placement not registered yet waits, then is applied and acknowledged', async () => {
  const { wf, connection } = await connected()
  const other = []
  wf.onAction((action) => { other.push(action.id) })
  connection.send({ type: 'action', id: 'iw_late', placement: 'stage-screen', content: { video: 'v1' } })
  connection.send({ type: 'action', id: 'iw_generic', content: {}, data: { kind: 'confetti' } })
  await connection.next((f) => f.type === 'ack' && f.id === 'iw_generic')
  assert.deepEqual(other, ['iw_generic'])
  assert.equal(connection.frames.some((f) => f.type === 'ack' && f.id === 'iw_late'), false)
  const applied = []
  wf.placement('stage-screen', (content) => { applied.push(content.video) })
  await connection.next((f) => f.type === 'ack' && f.id === 'iw_late')
  assert.deepEqual(applied, ['v1'])
  await wf.close()
})

test('a decision pushed for a placement is applied and its impression names the decision', async () => {
  const { wf, connection } = await connected()
  const applied = []
  wf.placement('lobby-billboard', (content) => { applied.push(content.creative_id) })
  connection.send({ type: 'decision', decision_id: 'dc_1', placement: 'lobby-billboard', content: { creative_id: 'cr-2' } })
  await settle(20)
  wf.flush()
  const batch = await connection.next((f) => Array.isArray(f.batch) && f.batch.some((m) => m.event === 'content.impression'))
  assert.deepEqual(applied, ['cr-2'])
  assert.deepEqual(tracks(batch.batch, 'content.impression')[0].properties,
    { placement_id: 'lobby-billboard', creative_id: 'cr-2', decision_id: 'dc_1' })
  connection.send({ ack: batch.id, accepted: batch.batch.map((m) => m.messageId), duplicates: [], rejected: [] })
  await wf.interacted('lobby-billboard', 'link')
  wf.flush()
  const next = await connection.next((f) => Array.isArray(f.batch) && f.batch.some((m) => m.event === 'content.interacted'))
  assert.deepEqual(tracks(next.batch, 'content.interacted')[0].properties,
    { placement_id: 'lobby-billboard', creative_id: 'cr-2', decision_id: 'dc_1', action: 'link' })
  await wf.close()
})

test('pings at the heartbeat the server asks for; a silent server is dropped and reconnected', async () => {
  const { wf, connection, clock } = await connected({ reconnectBaseMs: 100 })
  await clock.advance(25_000)
  assert.equal((await connection.next((f) => f.type === 'ping')).type, 'ping')
  await clock.advance(25_000)
  await connection.next((f) => f.type === 'ping')
  await clock.advance(25_000) // 75 s without a frame from the server: more than two heartbeats
  await settle(20)
  await clock.advance(200)
  const again = await push.connection(2)
  assert.equal((await again.next()).type, 'hello')
  await wf.close()
})

test('a refused key (1008) stops reconnecting and is reported', async () => {
  const { wf, connection, clock, errors } = await connected()
  const states = []
  wf.on('refused', () => states.push('refused'))
  connection.socket.close(1008, 'invalid_write_key')
  await settle(20)
  await clock.advance(60_000)
  assert.equal(push.connections.length, 1)
  assert.deepEqual(states, ['refused'])
  assert.ok(errors.some((e) => /refused/.test(e.message)))
  await wf.close()
})

test('revoking personalisation closes the channel', async () => {
  const { wf, connection } = await connected()
  const closed = new Promise((resolve) => connection.socket.on('close', resolve))
  wf.consent({ personalisation: false })
  await closed
  assert.equal(wf.push.ready, false)
  await wf.close()
})
