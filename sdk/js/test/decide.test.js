import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import { makeSdk, startCollector, tracks } from '../testing/helpers.js'

let server
beforeEach(async () => {
  server = await startCollector()
  let n = 0
  server.respond = (r) => {
    if (r.url !== '/v1/decide') return { status: 200, body: { success: true, accepted: r.body.batch.length, duplicates: 0 } }
    n += 1
    return { status: 200, body: { decision_id: `dc_${n}`, placement: r.body.placement,
      content: { creative_id: `cr-${r.body.placement}-${n}` }, strategy: 'rule', fallback: false } }
  }
})
afterEach(async () => { await server.close() })

const consent = { analytics: true, personalisation: true }

test('decide posts placement, ids and context with Basic auth', async () => {
  const { wf } = makeSdk(server.url, { consent })
  await wf.identify('user-3')
  await wf.enterZone('lobby', { type: 'lobby' })
  const decision = await wf.decide('lobby-billboard', { device: 'hmd' })
  assert.deepEqual(decision, { decision_id: 'dc_1', placement: 'lobby-billboard', content: { creative_id: 'cr-lobby-billboard-1' }, strategy: 'rule', fallback: false })
  const request = server.requests.find((r) => r.url === '/v1/decide')
  assert.equal(request.headers.authorization, `Basic ${Buffer.from('wk_test:').toString('base64')}`)
  assert.deepEqual(request.body, { placement: 'lobby-billboard', anonymousId: wf.anonymousId, userId: 'user-3',
    context: { world: 'paris-showroom', zone: 'lobby', device: 'hmd' } })
  await wf.close()
})

test('prefetched decisions are served without the network until their TTL passes', async () => {
  const { wf, clock } = makeSdk(server.url, { consent, decisionTtlMs: 30_000 })
  await wf.prefetch(['lobby-billboard', 'npc-greeter'])
  const asked = server.requests.filter((r) => r.url === '/v1/decide').length
  assert.equal(asked, 2)
  assert.equal(wf.cached('npc-greeter').decision_id, 'dc_2')
  await clock.advance(30_000)
  assert.equal(wf.cached('npc-greeter'), null)
  await wf.close()
})

test('show applies a prefetched decision once and sends its impression with the decision id', async () => {
  const { wf } = makeSdk(server.url, { consent })
  const applied = []
  wf.placement('lobby-billboard', (content, shown) => { applied.push([content.creative_id, shown.decisionId]) })
  await wf.prefetch(['lobby-billboard'])
  const before = server.requests.length
  await wf.show('lobby-billboard')
  assert.equal(server.requests.length, before, 'no request: the prefetched decision was used')
  await wf.show('lobby-billboard')
  assert.deepEqual(applied, [['cr-lobby-billboard-1', 'dc_1'], ['cr-lobby-billboard-2', 'dc_2']])
  await wf.flush()
  const impressions = tracks(server.messages(), 'content.impression').map((m) => m.properties)
  assert.deepEqual(impressions, [
    { placement_id: 'lobby-billboard', creative_id: 'cr-lobby-billboard-1', decision_id: 'dc_1' },
    { placement_id: 'lobby-billboard', creative_id: 'cr-lobby-billboard-2', decision_id: 'dc_2' },
  ])
  await wf.close()
})

test('without personalisation consent, or when the server fails, decide gives null', async () => {
  const { wf } = makeSdk(server.url, { consent: { analytics: true } })
  assert.equal(await wf.decide('lobby-billboard'), null)
  assert.equal(server.requests.filter((r) => r.url === '/v1/decide').length, 0)
  wf.consent({ personalisation: true })
  server.respond = () => ({ status: 500, body: { code: 'boom', message: 'x' } })
  assert.equal(await wf.decide('lobby-billboard'), null)
  await wf.close()
})
