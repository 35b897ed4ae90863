// Attention primitives for three.js: view, hover and gaze dwell per tagged object, measured
// on the device and sent as one aggregate per object per visit, never per frame.
//
// `update()` is called from the render loop; it samples at most `hz` times a second (10 at
// most), whatever the frame rate. Each sample:
// - finds the tagged objects (an object id in `userData.worldflow`) in the camera's frustum,
//   covering at least `minScreenFrac` of the screen (by their bounds) and not occluded (rays from the camera to the centre of the object's bounds, then to
//   four of its corners, until one reaches it unobstructed);
// - casts the gaze ray (centre of view, or an eye-tracking ray the app supplies) and the
//   pointer ray (mouse, touch or controller) and takes the tagged object each hits first;
// - credits the time since the previous sample (capped, so a stalled loop does not count as
//   attention) to what the previous sample saw.
// A visit ends when its object has been out of view for longer than the grace period, or on
// stop() (page hidden or gone). Its events are sent only past minimum dwells.

import { objFromTag, objectGazeDwell, objectHovered, objectViewed } from './events.js'

const CORNERS = [[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]] // a tetrahedron of the box's corners

function visibleInScene(object) {
  for (let o = object; o; o = o.parent) if (o.visible === false) return false
  return true
}

function within(object, ancestor) {
  for (let o = object; o; o = o.parent) if (o === ancestor) return true
  return false
}

export class AttentionTracker {
  /** @type {Map<object, object>} open visits by scene object */
  visits = new Map()
  samples = 0
  #last = null
  #pointer = null
  #tags = new WeakMap()
  #unbind = () => {}

  /**
   * @param {object} options see README.md ("Attention")
   */
  constructor({ THREE, camera, scene, raycaster, clock, emit, active = () => true, gazeAllowed = () => true,
    hz = 10, graceMs = 1000, minViewMs = 1000, minGazeMs = 500, minHoverMs = 300, maxGapMs = 1000,
    minScreenFrac = 0.002, occlusion = true, gaze = 'head', eyeRay = null, domElement = null, targets = null }) {
    if (!THREE) throw new TypeError('attention: pass the three.js module as THREE (the SDK does not import it)')
    if (!camera || !scene) throw new TypeError('attention: camera and scene are required')
    Object.assign(this, { THREE, camera, scene, clock, emit, active, gazeAllowed, graceMs, minViewMs, minGazeMs,
      minHoverMs, maxGapMs, minScreenFrac, occlusion, gaze, eyeRay, targets })
    this.intervalMs = 1000 / Math.min(10, Math.max(0.1, hz))
    this.raycaster = raycaster ?? new THREE.Raycaster()
    this.v = { box: new THREE.Box3(), frustum: new THREE.Frustum(), matrix: new THREE.Matrix4(),
      eye: new THREE.Vector3(), point: new THREE.Vector3(), dir: new THREE.Vector3(), ndc: new THREE.Vector2() }
    if (domElement) this.#bindPointer(domElement)
  }

  /** Call once per frame; samples when at least 1/hz s passed since the last sample. */
  update() {
    if (this.stopped) return false
    if (!this.active()) {
      this.visits.clear() // no consent: nothing measured is kept
      this.#last = null
      return false
    }
    const now = this.clock.now()
    if (this.#last !== null && now - this.#last < this.intervalMs) return false
    this.#sample(now)
    return true
  }

  /** The pointer in normalised device coordinates (-1..1, y up); `input` as the catalogue names it. */
  setPointer(x, y, input = 'mouse') {
    this.#pointer = { ndc: { x, y }, input }
  }

  /** A pointing ray in world space (an XR controller or hand). */
  setPointerRay(origin, direction, input = 'controller') {
    this.#pointer = { origin, direction, input }
  }

  clearPointer() {
    this.#pointer = null
  }

  /** Ends every open visit now (sending its events) and keeps tracking on later updates. */
  flush() {
    const now = this.clock.now()
    if (this.#last !== null) this.#credit(Math.min(now - this.#last, this.maxGapMs))
    for (const object of [...this.visits.keys()]) this.#end(object)
    this.#last = null
  }

  /** Ends every visit and stops listening to the pointer. */
  stop() {
    this.flush()
    this.#unbind()
    this.stopped = true
  }

  #bindPointer(element) {
    const move = (event) => {
      const rect = element.getBoundingClientRect?.() ?? { left: 0, top: 0, width: element.clientWidth, height: element.clientHeight }
      if (!rect.width || !rect.height) return
      const x = ((event.clientX - rect.left) / rect.width) * 2 - 1
      const y = -((event.clientY - rect.top) / rect.height) * 2 + 1
      this.setPointer(x, y, event.pointerType === 'touch' ? 'touch' : 'mouse')
    }
    const leave = () => this.clearPointer()
    element.addEventListener('pointermove', move)
    element.addEventListener('pointerleave', leave)
    this.#unbind = () => {
      element.removeEventListener('pointermove', move)
      element.removeEventListener('pointerleave', leave)
    }
  }

  #obj(object) {
    const tag = object.userData?.worldflow
    if (!tag) return undefined
    const cached = this.#tags.get(object)
    if (cached && cached.tag === tag) return cached.obj
    const obj = objFromTag(tag)
    this.#tags.set(object, { tag, obj })
    return obj
  }

  #tagged() {
    const found = []
    const consider = (object) => {
      if (this.#obj(object)) found.push(object)
    }
    if (this.targets) for (const object of this.targets()) consider(object)
    else this.scene.traverse(consider)
    return found
  }

  #taggedAncestor(object) {
    for (let o = object; o; o = o.parent) if (this.#obj(o)) return o
    return null
  }

  /** The first visible object a ray hits, or null. */
  #firstHit(far = Infinity) {
    this.raycaster.camera = this.camera
    this.raycaster.far = far
    for (const hit of this.raycaster.intersectObjects(this.scene.children, true)) {
      if (visibleInScene(hit.object)) return hit
    }
    return null
  }

  /** The tagged object a ray hits first (null when nothing tagged is in front). */
  #target(setRay) {
    if (!setRay()) return null
    const hit = this.#firstHit()
    return hit ? this.#taggedAncestor(hit.object) : null
  }

  #gazeTarget() {
    if (!this.gaze || !this.gazeAllowed(this.gaze)) return null
    return this.#target(() => {
      if (this.gaze !== 'eye') {
        this.raycaster.setFromCamera(this.v.ndc.set(0, 0), this.camera)
        return true
      }
      const ray = this.eyeRay?.()
      if (!ray) return false
      this.raycaster.set(ray.origin, ray.direction)
      return true
    })
  }

  #pointerTarget() {
    const pointer = this.#pointer
    if (!pointer) return null
    return this.#target(() => {
      if (pointer.ndc) this.raycaster.setFromCamera(this.v.ndc.set(pointer.ndc.x, pointer.ndc.y), this.camera)
      else this.raycaster.set(pointer.origin, pointer.direction)
      return true
    })
  }

  #unoccluded(object, box) {
    const { eye, point, dir } = this.v
    const points = [box.getCenter(point).clone()]
    for (const [x, y, z] of CORNERS) {
      points.push(new this.THREE.Vector3(
        box.min.x + (box.max.x - box.min.x) * (0.1 + 0.8 * x),
        box.min.y + (box.max.y - box.min.y) * (0.1 + 0.8 * y),
        box.min.z + (box.max.z - box.min.z) * (0.1 + 0.8 * z)))
    }
    for (const target of points) {
      const distance = dir.subVectors(target, eye).length()
      if (distance < 1e-6) return true
      this.raycaster.set(eye, dir.normalize())
      const hit = this.#firstHit(distance)
      if (!hit || within(hit.object, object) || hit.distance >= distance - 1e-3) return true
    }
    return false
  }

  #measure(box) {
    const { eye, point } = this.v
    const distance = box.distanceToPoint(eye)
    if (box.containsPoint(eye)) return { distance, frac: 1 }
    let minX = 1, minY = 1, maxX = -1, maxY = -1, front = 0
    for (let i = 0; i < 8; i++) {
      point.set(i & 1 ? box.max.x : box.min.x, i & 2 ? box.max.y : box.min.y, i & 4 ? box.max.z : box.min.z)
      point.applyMatrix4(this.camera.matrixWorldInverse)
      if (point.z >= 0) continue // behind a perspective camera
      point.applyMatrix4(this.camera.projectionMatrix)
      front++
      minX = Math.min(minX, point.x); maxX = Math.max(maxX, point.x)
      minY = Math.min(minY, point.y); maxY = Math.max(maxY, point.y)
    }
    if (front < 8) { minX = Math.min(minX, -1); maxX = Math.max(maxX, 1); minY = Math.min(minY, -1); maxY = Math.max(maxY, 1) }
    const clamp = (v) => Math.min(1, Math.max(-1, v))
    const area = Math.max(0, clamp(maxX) - clamp(minX)) * Math.max(0, clamp(maxY) - clamp(minY))
    return { distance, frac: area / 4 }
  }

  #credit(dt) {
    for (const visit of this.visits.values()) {
      if (visit.inView) visit.viewMs += dt
      if (visit.gazing) visit.gazeMs += dt
      if (visit.hovering) visit.hoverMs += dt
    }
  }

  #sample(now) {
    this.samples++
    this.#credit(this.#last === null ? 0 : Math.min(now - this.#last, this.maxGapMs))
    this.#last = now
    const { box, frustum, matrix, eye } = this.v
    this.scene.updateMatrixWorld()
    this.camera.updateMatrixWorld()
    this.camera.getWorldPosition(eye)
    frustum.setFromProjectionMatrix(matrix.multiplyMatrices(this.camera.projectionMatrix, this.camera.matrixWorldInverse))

    const seen = new Map()
    for (const object of this.#tagged()) {
      if (!visibleInScene(object)) continue
      box.setFromObject(object)
      if (box.isEmpty() || !frustum.intersectsBox(box)) continue
      const measured = this.#measure(box)
      if (measured.frac < this.minScreenFrac) continue // a speck in the distance is not in view
      if (this.occlusion && !this.#unoccluded(object, box)) continue
      seen.set(object, measured)
    }
    const gazed = this.#gazeTarget()
    const pointer = this.#pointer
    const hovered = this.#pointerTarget()
    for (const object of [gazed, hovered]) {
      if (object && !seen.has(object)) seen.set(object, this.#measure(box.setFromObject(object)))
    }

    for (const [object, { distance, frac }] of seen) {
      let visit = this.visits.get(object)
      if (!visit) {
        visit = { obj: this.#obj(object), start: now, lastSeen: now, viewMs: 0, gazeMs: 0, hoverMs: 0,
          fixations: 0, ttffMs: null, maxFrac: 0, minDistance: Infinity, input: null,
          inView: false, gazing: false, hovering: false }
        this.visits.set(object, visit)
      }
      visit.inView = true
      visit.lastSeen = now
      visit.maxFrac = Math.max(visit.maxFrac, frac)
      visit.minDistance = Math.min(visit.minDistance, distance)
      const gazing = object === gazed
      if (gazing && !visit.gazing) {
        visit.fixations++
        visit.ttffMs ??= now - visit.start
      }
      visit.gazing = gazing
      visit.hovering = object === hovered
      if (visit.hovering) visit.input = pointer.input
    }
    for (const [object, visit] of [...this.visits]) {
      if (seen.has(object)) continue
      visit.inView = visit.gazing = visit.hovering = false
      if (now - visit.lastSeen > this.graceMs) this.#end(object)
    }
  }

  #end(object) {
    const visit = this.visits.get(object)
    this.visits.delete(object)
    if (!visit?.obj) return
    const { obj } = visit
    if (visit.viewMs >= this.minViewMs) {
      this.emit('object.viewed', objectViewed({ obj, viewMs: visit.viewMs, maxScreenFrac: visit.maxFrac, distance: visit.minDistance }))
    }
    if (visit.gazeMs >= this.minGazeMs && this.gazeAllowed(this.gaze)) {
      this.emit('object.gaze_dwell', objectGazeDwell({ obj, source: this.gaze === 'eye' ? 'eye' : 'head',
        dwellMs: visit.gazeMs, fixations: visit.fixations, ttffMs: visit.ttffMs ?? undefined }))
    }
    if (visit.hoverMs >= this.minHoverMs) {
      this.emit('object.hovered', objectHovered({ obj, input: visit.input ?? 'mouse', hoverMs: visit.hoverMs }))
    }
  }
}
