import assert from 'node:assert/strict'
import { afterEach, beforeEach, test } from 'node:test'
import * as THREE from 'three'
import { objFromTag } from '../src/index.js'
import { makeSdk, startCollector, tracks } from '../testing/helpers.js'

let collector
beforeEach(async () => { collector = await startCollector() })
afterEach(async () => { await collector.close() })

function box(size, position, tag) {
  const mesh = new THREE.Mesh(new THREE.BoxGeometry(...size), new THREE.MeshBasicMaterial())
  mesh.position.set(...position)
  if (tag) mesh.userData.worldflow = tag
  return mesh
}

/** A showroom: a sneaker straight ahead, a hat to the right, a bag behind a wall, a lamp behind the camera. */
function showroom() {
  const scene = new THREE.Scene()
  const camera = new THREE.PerspectiveCamera(60, 1, 0.1, 100)
  const sneaker = box([1, 1, 1], [0, 0, -3], { object_id: 'sneaker-1', sku: 'SNK-1', category: 'footwear' })
  const hat = box([0.5, 0.5, 0.5], [1.2, 0, -3], { object_id: 'hat-2', product: { sku: 'HAT-2', variant: 'red' }, placement_id: 'hat-stand' })
  const bag = box([0.5, 0.5, 0.5], [-1.5, 0, -8], { object_id: 'bag-3' })
  const wall = box([3, 3, 0.2], [-1.5, 0, -5])
  const lamp = box([0.5, 0.5, 0.5], [0, 0, 3], { object_id: 'lamp-4' })
  // A tagged group: hits on its child meshes count for it.
  const shelf = new THREE.Group()
  shelf.position.set(0, -1.4, -3)
  shelf.userData.worldflow = { object_id: 'shelf-5' }
  shelf.add(box([0.8, 0.2, 0.4], [0, 0, 0]))
  scene.add(sneaker, hat, bag, wall, lamp, shelf)
  return { scene, camera, sneaker, hat, bag, wall, lamp, shelf }
}

/** Runs the render loop for `ms` at `fps`. */
async function render(clock, tracker, ms, fps = 60) {
  const step = 1000 / fps
  for (let t = 0; t < ms; t += step) {
    tracker.update()
    await clock.advance(step)
  }
}

async function sent(wf) {
  await wf.flush()
  return collector.messages()
}

test('one aggregate per object per visit: view, gaze (centre of view) and nothing for hidden objects', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  const tracker = wf.attention({ camera: room.camera, scene: room.scene })
  await render(clock, tracker, 3000)
  room.camera.rotation.y = Math.PI / 2 // look left: the sneaker and the hat leave view
  await render(clock, tracker, 1500)
  const messages = await sent(wf)

  const viewed = tracks(messages, 'object.viewed')
  assert.deepEqual(viewed.map((m) => m.properties.obj.object_id).sort(), ['hat-2', 'shelf-5', 'sneaker-1'])
  const sneaker = viewed.find((m) => m.properties.obj.object_id === 'sneaker-1').properties
  assert.deepEqual(sneaker.obj, { object_id: 'sneaker-1', product: { sku: 'SNK-1', category: 'footwear' }, tags: ['footwear'] })
  assert.ok(Math.abs(sneaker.view_ms - 3000) <= 120, `view_ms ${sneaker.view_ms}`)
  assert.equal(sneaker.distance_bucket, 'mid')
  assert.ok(sneaker.max_screen_frac > 0.05 && sneaker.max_screen_frac < 0.3, `${sneaker.max_screen_frac}`)
  assert.deepEqual(viewed.find((m) => m.properties.obj.object_id === 'hat-2').properties.obj,
    { object_id: 'hat-2', product: { sku: 'HAT-2', variant: 'red' }, placement_id: 'hat-stand' })

  const gazed = tracks(messages, 'object.gaze_dwell')
  assert.equal(gazed.length, 1)
  assert.equal(gazed[0].properties.obj.object_id, 'sneaker-1')
  assert.equal(gazed[0].properties.source, 'head')
  assert.equal(gazed[0].properties.fixations, 1)
  assert.equal(gazed[0].properties.ttff_ms, 0)
  assert.ok(Math.abs(gazed[0].properties.dwell_ms - 3000) <= 120)
  assert.equal(tracks(messages, 'object.hovered').length, 0)
  await wf.close()
})

test('a speck in the distance is not in view (minScreenFrac), unless gazed at', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const scene = new THREE.Scene()
  const camera = new THREE.PerspectiveCamera(60, 1, 0.1, 100)
  // 0.3 m cubes: one 2 m ahead and to the left (about 1 % of the screen), one 30 m ahead and to
  // the right (a speck: under 0.01 %), one 30 m straight ahead (a speck, but the gaze ray hits it).
  scene.add(box([0.3, 0.3, 0.3], [-0.5, 0, -2], { object_id: 'near' }),
    box([0.3, 0.3, 0.3], [6, 0, -30], { object_id: 'far' }),
    box([0.3, 0.3, 0.3], [0, 0, -30], { object_id: 'far-gazed' }))
  const tracker = wf.attention({ camera, scene })
  await render(clock, tracker, 2000)
  tracker.flush()
  const messages = await sent(wf)
  assert.deepEqual(tracks(messages, 'object.viewed').map((m) => m.properties.obj.object_id).sort(), ['far-gazed', 'near'])
  assert.deepEqual(tracks(messages, 'object.gaze_dwell').map((m) => m.properties.obj.object_id), ['far-gazed'])
  await wf.close()
})

test('sampling stays at or under hz whatever the frame rate', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  let raycasts = 0
  const raycaster = new THREE.Raycaster()
  const intersect = raycaster.intersectObjects.bind(raycaster)
  raycaster.intersectObjects = (...args) => { raycasts++; return intersect(...args) }
  const tracker = wf.attention({ camera: room.camera, scene: room.scene, raycaster })
  await render(clock, tracker, 1000, 240)
  assert.ok(tracker.samples >= 9 && tracker.samples <= 11, `${tracker.samples} samples at 240 fps`)
  const perSample = raycasts / tracker.samples
  const slow = wf.attention({ camera: room.camera, scene: room.scene, hz: 4 })
  await render(clock, slow, 1000, 120)
  assert.ok(slow.samples <= 5, `${slow.samples} samples at hz 4`)
  const capped = wf.attention({ camera: room.camera, scene: room.scene, hz: 60 })
  await render(clock, capped, 1000, 120)
  assert.ok(capped.samples <= 11, `hz is capped at 10, got ${capped.samples}`)
  assert.ok(perSample < 20, `${perSample} raycasts a sample`)
  await wf.close()
})

test('occluded objects are not viewed; one seen past the wall is', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  const tracker = wf.attention({ camera: room.camera, scene: room.scene })
  await render(clock, tracker, 1500)
  room.wall.visible = false
  await render(clock, tracker, 1500)
  tracker.stop()
  const viewed = tracks(await sent(wf), 'object.viewed').map((m) => [m.properties.obj.object_id, m.properties.view_ms])
  const bag = viewed.find(([id]) => id === 'bag-3')
  assert.ok(bag && Math.abs(bag[1] - 1500) <= 120, `bag: ${bag}`)
  assert.equal(viewed.some(([id]) => id === 'lamp-4'), false, 'behind the camera')
  await wf.close()
})

test('hover: the pointer ray, aggregated into object.hovered with hover_ms and the input', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  const tracker = wf.attention({ camera: room.camera, scene: room.scene })
  const hat = room.hat.position.clone().project(room.camera)
  tracker.setPointer(hat.x, hat.y, 'touch')
  await render(clock, tracker, 800)
  tracker.clearPointer()
  await render(clock, tracker, 400)
  tracker.setPointer(hat.x, hat.y, 'touch') // a second hover in the same visit
  await render(clock, tracker, 300)
  tracker.stop()
  const hovered = tracks(await sent(wf), 'object.hovered')
  assert.equal(hovered.length, 1)
  assert.equal(hovered[0].properties.obj.object_id, 'hat-2')
  assert.equal(hovered[0].properties.input, 'touch')
  assert.ok(Math.abs(hovered[0].properties.hover_ms - 1100) <= 150, `${hovered[0].properties.hover_ms}`)
  await wf.close()
})

test('a short absence (under the grace period) keeps one visit; short dwells send nothing', async () => {
  const { wf, clock } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  room.scene.remove(room.hat, room.shelf, room.bag, room.wall, room.lamp)
  const tracker = wf.attention({ camera: room.camera, scene: room.scene, graceMs: 1000 })
  await render(clock, tracker, 700)
  room.sneaker.visible = false
  await render(clock, tracker, 600)
  room.sneaker.visible = true
  await render(clock, tracker, 700)
  room.sneaker.visible = false
  await render(clock, tracker, 1500)
  room.sneaker.visible = true
  await render(clock, tracker, 400) // a new visit, too short for any event
  tracker.stop()
  const messages = await sent(wf)
  const viewed = tracks(messages, 'object.viewed')
  assert.equal(viewed.length, 1)
  assert.ok(Math.abs(viewed[0].properties.view_ms - 1400) <= 150, `${viewed[0].properties.view_ms}`)
  const gazed = tracks(messages, 'object.gaze_dwell')
  assert.equal(gazed.length, 1)
  assert.equal(gazed[0].properties.fixations, 2)
  await wf.close()
})

test('eye-tracked gaze is measured only with gaze consent, and sent as source eye', async () => {
  const eyeRay = () => ({ origin: new THREE.Vector3(0, 0, 0), direction: new THREE.Vector3(0.4, 0, -1).normalize() })
  const run = async (consent) => {
    const { wf, clock } = makeSdk(collector.url, { consent, THREE })
    const room = showroom()
    const tracker = wf.attention({ camera: room.camera, scene: room.scene, gaze: 'eye', eyeRay })
    await render(clock, tracker, 1500)
    tracker.stop()
    await wf.flush()
    await wf.close()
  }
  await run({ analytics: true })
  assert.equal(tracks(collector.messages(), 'object.gaze_dwell').length, 0)
  await run({ analytics: true, gaze: true })
  const gazed = tracks(collector.messages(), 'object.gaze_dwell')
  assert.deepEqual(gazed.map((m) => [m.properties.obj.object_id, m.properties.source]), [['hat-2', 'eye']])
})

test('no analytics consent: trackers measure nothing', async () => {
  const { wf, clock } = makeSdk(collector.url, { THREE })
  const room = showroom()
  const tracker = wf.attention({ camera: room.camera, scene: room.scene })
  await render(clock, tracker, 2000)
  assert.equal(tracker.samples, 0)
  tracker.stop()
  await wf.flush()
  assert.deepEqual(collector.requests, [])
  await wf.close()
})

test('hiding the page ends the visits, and their events leave with the beacon', async () => {
  const { wf, clock, page } = makeSdk(collector.url, { consent: { analytics: true }, THREE })
  const room = showroom()
  const tracker = wf.attention({ camera: room.camera, scene: room.scene })
  await render(clock, tracker, 2000)
  page.hide()
  const messages = (await page.beaconBodies()).flatMap((b) => b.batch)
  assert.ok(tracks(messages, 'object.viewed').some((m) => m.properties.obj.object_id === 'sneaker-1'))
  assert.equal(tracker.visits.size, 0)
  await wf.close()
})

test('tags become catalogue objects; tags without an object id are ignored', () => {
  assert.equal(objFromTag({ sku: 'X' }), undefined)
  assert.equal(objFromTag(null), undefined)
  assert.deepEqual(objFromTag({ object_id: 42, tags: ['a', 7, null], node_path: '/Root/Shelf' }),
    { object_id: '42', node_path: '/Root/Shelf', tags: ['a', '7'] })
  assert.deepEqual(objFromTag({ object_id: 'o', product: 'SKU-1' }), { object_id: 'o', product: { sku: 'SKU-1' } })
  assert.throws(() => makeAttentionWithoutThree(), /pass the three.js module as THREE/)
})

test('scene registry tags (glTF extras) become objects; zones are not objects', () => {
  assert.deepEqual(
    objFromTag({ kind: 'product', id: 'scene/wall/runner', sku: 'SNK-1', category: 'sneakers', tags: ['new'] }),
    { object_id: 'scene/wall/runner', product: { sku: 'SNK-1', category: 'sneakers' }, tags: ['new', 'sneakers'] })
  assert.deepEqual(objFromTag({ kind: 'placement', id: 'lobby-billboard', placement_type: 'billboard' }),
    { object_id: 'lobby-billboard', placement_id: 'lobby-billboard' })
  assert.equal(objFromTag({ kind: 'zone', id: 'entrance', zone_type: 'lobby' }), undefined)
  assert.equal(objFromTag({ kind: 'object' }), undefined) // no explicit id: the page cannot know the hashed one
  assert.equal(objFromTag({ id: 'x' }), undefined) // not a scene tag
})

function makeAttentionWithoutThree() {
  const { wf } = makeSdk('http://127.0.0.1:9')
  try {
    return wf.attention({ camera: {}, scene: {} })
  } finally {
    wf.close()
  }
}
