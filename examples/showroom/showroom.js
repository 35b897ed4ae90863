// The Paris Flagship Showroom: a three.js scene (showroom.gltf, made by build_scene.py) walked
// with the keyboard and mouse, measured by the Worldflow SDK, and personalised by Worldflow:
// billboards and the NPC show decisions (POST /v1/decide) and the in-world actions journeys
// push on the push channel.
//
// The page's address carries its settings: ?key=<the world's key>&world=<world id>. The key
// is the write key of a source created with a world (docs/PUSH.md); the page sends events
// with it and opens the push channel with it.

import * as THREE from 'three'
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js'
import { Worldflow } from './sdk/index.js'

const params = new URLSearchParams(location.search)
const KEY = params.get('key')
const WORLD = params.get('world') ?? 'paris-showroom'
const EYE = 1.6 // metres
const WALK = 2.2 // metres a second; Shift doubles it
const TURN = 1.8 // radians a second
const ROOM = { minX: -9.6, maxX: 9.6, minZ: -6.4, maxZ: 6.6 }

const $ = (id) => document.getElementById(id)
const state = {
  ready: false,
  avatar: { x: 0, z: 5, yaw: 0, pitch: -0.08 }, // yaw 0 faces −z, the back wall
  zone: null,
  zones: [], // {id, type, box}
  placements: {}, // id → {content, source, decisionId, actionId}
  placementIds: [],
  errors: [],
}
window.showroom = state

function fail(error) {
  const message = String(error?.message ?? error)
  state.errors.push(message)
  $('error').textContent = message
}

if (!KEY) fail('Open this page with ?key=<a world key> (make demo prints the address).')

// --- Worldflow ---------------------------------------------------------------------------

const wf = Worldflow.init({
  host: location.origin,
  writeKey: KEY ?? 'missing',
  world: WORLD,
  THREE,
  flushIntervalMs: 1000, // a showroom reacts within seconds, not at the SDK's default 5 s
  appVersion: 'showroom-1',
  onError: (error) => console.warn('worldflow:', error),
})
state.wf = wf

// --- the scene ---------------------------------------------------------------------------

const renderer = new THREE.WebGLRenderer({ antialias: true })
renderer.setPixelRatio(Math.min(2, window.devicePixelRatio))
$('view').appendChild(renderer.domElement)
const scene = new THREE.Scene()
scene.background = new THREE.Color(0x2a2a30)
const camera = new THREE.PerspectiveCamera(70, 1, 0.05, 100)
scene.add(new THREE.HemisphereLight(0xffffff, 0x444450, 2.2))
const sun = new THREE.DirectionalLight(0xffffff, 1.6)
sun.position.set(3, 8, 6)
scene.add(sun)

function resize() {
  renderer.setSize(window.innerWidth, window.innerHeight, false)
  camera.aspect = window.innerWidth / Math.max(1, window.innerHeight)
  camera.updateProjectionMatrix()
}
window.addEventListener('resize', resize)
resize()

// A placement's content drawn on a canvas that becomes the screen's texture.
class Screen {
  constructor(mesh, width = 1024, height = 564) {
    this.canvas = document.createElement('canvas')
    this.canvas.width = width
    this.canvas.height = height
    this.texture = new THREE.CanvasTexture(this.canvas)
    this.texture.colorSpace = THREE.SRGBColorSpace
    this.texture.flipY = false // glTF's texture coordinates start at the image's top left
    mesh.material = new THREE.MeshBasicMaterial({ map: this.texture })
  }

  draw(content) {
    const g = this.canvas.getContext('2d')
    const { width: w, height: h } = this.canvas
    g.fillStyle = content.background ?? '#101418'
    g.fillRect(0, 0, w, h)
    g.fillStyle = content.accent ?? '#e8c170'
    g.fillRect(0, h - 18, w, 18)
    g.textAlign = 'center'
    g.fillStyle = '#ffffff'
    let y = h * 0.36
    if (content.title) {
      g.font = 'bold 84px system-ui, sans-serif'
      g.fillText(content.title, w / 2, y, w - 80)
      y += 110
    }
    g.font = '56px system-ui, sans-serif'
    for (const line of wrap(g, content.text ?? content.line ?? content.alt ?? '', w - 120)) {
      g.fillText(line, w / 2, y)
      y += 70
    }
    this.texture.needsUpdate = true
  }
}

function wrap(g, text, width) {
  const lines = []
  let line = ''
  for (const word of String(text).split(/\s+/)) {
    const next = line ? `${line} ${word}` : word
    if (g.measureText(next).width > width && line) {
      lines.push(line)
      line = word
    } else line = next
  }
  if (line) lines.push(line)
  return lines.slice(0, 4)
}

function showPlacement(id, content, shown) {
  state.placements[id] = { content, source: shown.source, decisionId: shown.decisionId, actionId: shown.actionId }
  let item = document.querySelector(`#placements li[data-placement="${CSS.escape(id)}"]`)
  if (!item) {
    item = document.createElement('li')
    item.dataset.placement = id
    $('placements').appendChild(item)
  }
  item.dataset.source = shown.source ?? ''
  item.textContent = `${id}: ${[content.title, content.text ?? content.line].filter(Boolean).join(' — ')}`
}

function setUpPlacements(root) {
  const ids = []
  root.traverse((node) => {
    const tag = node.userData?.worldflow
    if (tag?.kind !== 'placement' || !node.isMesh) return
    ids.push(tag.id)
    if (tag.placement_type === 'npc') {
      wf.placement(tag.id, (content, shown) => {
        const line = content.line ?? content.text ?? ''
        $('npc-line').textContent = `${tag.name ?? 'NPC'}: ${line}`
        $('npc-line').style.display = line ? 'block' : 'none'
        showPlacement(tag.id, content, shown)
      })
      return
    }
    const screen = new Screen(node)
    screen.draw({ text: '…' })
    wf.placement(tag.id, (content, shown) => {
      screen.draw(content)
      showPlacement(tag.id, content, shown)
    })
  })
  return ids
}

function findZones(root) {
  root.updateMatrixWorld(true)
  root.traverse((node) => {
    const tag = node.userData?.worldflow
    if (tag?.kind !== 'zone') return
    const box = new THREE.Box3(new THREE.Vector3(-0.5, -0.5, -0.5), new THREE.Vector3(0.5, 0.5, 0.5))
    state.zones.push({ id: tag.id, type: tag.zone_type, name: tag.name, box: box.applyMatrix4(node.matrixWorld) })
  })
}

// --- walking -----------------------------------------------------------------------------

const keys = new Set()
window.addEventListener('keydown', (e) => {
  keys.add(e.key.toLowerCase())
  wf.activity()
})
window.addEventListener('keyup', (e) => keys.delete(e.key.toLowerCase()))
window.addEventListener('blur', () => keys.clear())
const held = (...names) => names.some((n) => keys.has(n))

let drag = null
renderer.domElement.addEventListener('pointerdown', (e) => {
  drag = { x: e.clientX, y: e.clientY }
  renderer.domElement.setPointerCapture(e.pointerId)
})
renderer.domElement.addEventListener('pointermove', (e) => {
  if (!drag) return
  state.avatar.yaw += (e.clientX - drag.x) * 0.004
  state.avatar.pitch = Math.max(-1.2, Math.min(1.2, state.avatar.pitch - (e.clientY - drag.y) * 0.004))
  drag = { x: e.clientX, y: e.clientY }
  wf.activity()
})
renderer.domElement.addEventListener('pointerup', () => { drag = null })

function move(dt) {
  const a = state.avatar
  if (held('a', 'arrowleft')) a.yaw -= TURN * dt
  if (held('d', 'arrowright')) a.yaw += TURN * dt
  const forward = (held('w', 'arrowup') ? 1 : 0) - (held('s', 'arrowdown') ? 1 : 0)
  if (forward) {
    const step = forward * WALK * (held('shift') ? 2 : 1) * dt
    a.x = Math.max(ROOM.minX, Math.min(ROOM.maxX, a.x + Math.sin(a.yaw) * step))
    a.z = Math.max(ROOM.minZ, Math.min(ROOM.maxZ, a.z - Math.cos(a.yaw) * step))
  }
  camera.position.set(a.x, EYE, a.z)
  camera.rotation.set(a.pitch, -a.yaw, 0, 'YXZ')
  return forward !== 0 || held('a', 'd', 'arrowleft', 'arrowright')
}

const feet = new THREE.Vector3()
function updateZone() {
  feet.set(state.avatar.x, 0.5, state.avatar.z)
  const zone = state.zones.find((z) => z.box.containsPoint(feet)) ?? null
  if (zone?.id === state.zone) return
  if (zone) wf.enterZone(zone.id, { type: zone.type })
  else if (state.zone) wf.exitZone(state.zone)
  state.zone = zone?.id ?? null
  $('zone').textContent = zone?.name ?? '—'
}

// --- consent -----------------------------------------------------------------------------

// Placements first show what /v1/decide chooses (prefetched: no wait when they come into
// view); journeys' in-world actions replace it when they arrive on the push channel.
function startPersonalising() {
  wf.connect()
  wf.prefetch(state.placementIds).then(() => Promise.all(state.placementIds.map((id) => wf.show(id))))
    .catch(fail)
}

function choose(accept) {
  $('consent').hidden = true
  wf.consent({ analytics: accept, personalisation: accept, marketing_contact: false })
  state.zone = null // entered again, now that it may be recorded
  if (accept) startPersonalising()
}
$('accept').addEventListener('click', () => choose(true))
$('decline').addEventListener('click', () => choose(false))

// --- start -------------------------------------------------------------------------------

async function start() {
  const gltf = await new GLTFLoader().loadAsync('./showroom.gltf')
  scene.add(gltf.scene)
  findZones(gltf.scene)
  state.placementIds = setUpPlacements(gltf.scene)
  const attention = wf.attention({ camera, scene: gltf.scene, domElement: renderer.domElement })
  state.attention = attention
  move(0)
  if (!wf.consentKnown) $('consent').hidden = false
  else if (wf.consents.personalisation) startPersonalising()
  let last = performance.now()
  renderer.setAnimationLoop((now) => {
    const dt = Math.min(0.25, (now - last) / 1000) // a slow frame still moves, a stall does not jump
    last = now
    if (move(dt)) wf.activity()
    updateZone()
    attention.update()
    renderer.render(scene, camera)
  })
  state.ready = true
}

start().catch(fail)
