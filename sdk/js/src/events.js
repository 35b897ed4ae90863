// The catalogue events this SDK emits, built in one place so that every property it sends is
// one the server's catalogue accepts (src/worldflow/events/catalogue.yaml): enums are checked,
// integers rounded, fractions clamped, and a value the catalogue would refuse is left out
// rather than sent.

export const ZONE_TYPES = ['showroom', 'stage', 'lobby', 'checkout', 'booth', 'portal_hub']
export const ENTRY_POINTS = ['direct', 'portal', 'link', 'campaign', 'event']
export const END_REASONS = ['quit', 'timeout', 'background', 'crash', 'xr_end']
export const INPUTS = ['controller', 'hand', 'gaze', 'mouse', 'touch']
export const GAZE_SOURCES = ['head', 'eye', 'pointer']
export const CONTENT_ACTIONS = ['select', 'play', 'link']
export const CONSENT_SOURCES = ['ui', 'platform', 'gpc']
export const PRIVACY_KINDS = ['erase', 'export', 'restrict']

/** The consent purposes the catalogue names; others may be added and are sent as given. */
export const PURPOSES = ['analytics', 'personalisation', 'marketing_contact', 'gaze', 'motion', 'voice']

/** @param {unknown} value */
export function text(value) {
  if (typeof value === 'string') return value || undefined
  if (typeof value === 'number' && Number.isFinite(value)) return String(value)
  return undefined
}

/** @param {unknown} value @param {string[]} allowed */
export function oneOf(value, allowed) {
  return typeof value === 'string' && allowed.includes(value) ? value : undefined
}

/** @param {unknown} value */
export function ms(value) {
  return typeof value === 'number' && Number.isFinite(value) ? Math.max(0, Math.round(value)) : undefined
}

/** @param {unknown} value */
function fraction(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined
  return Math.round(Math.min(1, Math.max(0, value)) * 1000) / 1000
}

/** Drops undefined members, so that absent fields are absent rather than null. */
export function compact(values) {
  const out = {}
  for (const [key, value] of Object.entries(values)) if (value !== undefined) out[key] = value
  return out
}

/**
 * The catalogue's `obj` for a scene object's tag (`userData.worldflow` in three.js, glTF
 * `extras.worldflow`): `{object_id, sku?, product?, category?, placement_id?, tags?,
 * node_path?, asset_id?}`. Undefined when the tag has no usable object id.
 * @param {any} tag
 */
export function objFromTag(tag) {
  if (!tag || typeof tag !== 'object') return undefined
  // The SDK's own tag names `object_id`; a scene registry tag (glTF extras, which three.js's
  // GLTFLoader puts in userData) names `kind` and `id`. A zone is a volume, not an object.
  const sceneTag = typeof tag.kind === 'string'
  if (sceneTag && tag.kind === 'zone') return undefined
  const objectId = text(tag.object_id) ?? (sceneTag ? text(tag.id) : undefined)
  if (!objectId) return undefined
  const category = text(tag.category)
  const given = typeof tag.product === 'object' && tag.product ? tag.product : {}
  const sku = text(given.sku) ?? text(typeof tag.product === 'string' ? tag.product : tag.sku)
  const product = sku
    ? compact({ sku, variant: text(given.variant ?? tag.variant), catalog: text(given.catalog ?? tag.catalog), category })
    : undefined
  const tags = Array.isArray(tag.tags) ? tag.tags.map(text).filter(Boolean) : []
  if (category && !tags.includes(category)) tags.push(category)
  return compact({
    object_id: objectId,
    node_path: text(tag.node_path),
    asset_id: text(tag.asset_id),
    product,
    placement_id: text(tag.placement_id) ?? (tag.kind === 'placement' ? objectId : undefined),
    tags: tags.length ? tags : undefined,
  })
}

/** consent.updated: every purpose known to this visitor, granted or not. */
export function consentUpdated(scopes, { policyVersion, source } = {}) {
  const clean = {}
  for (const [purpose, granted] of Object.entries(scopes)) clean[purpose] = granted === true
  return compact({ scopes: clean, policy_version: text(policyVersion), source: oneOf(source, CONSENT_SOURCES) })
}

export function sessionStarted({ entryPoint, campaignId, referrerWorld, appVersion } = {}) {
  return compact({
    entry_point: oneOf(entryPoint, ENTRY_POINTS),
    campaign_id: text(campaignId),
    referrer_world: text(referrerWorld),
    app_version: text(appVersion),
  })
}

export function sessionEnded({ durationMs, reason, eventsDropped }) {
  return compact({ duration_ms: ms(durationMs), reason: oneOf(reason, END_REASONS), events_dropped: ms(eventsDropped) })
}

export function zoneEntered({ zoneId, zoneType, fromZone }) {
  return compact({ zone_id: zoneId, zone_type: oneOf(zoneType, ZONE_TYPES), from_zone: text(fromZone) })
}

export function zoneExited({ zoneId, dwellMs, toZone }) {
  return compact({ zone_id: zoneId, dwell_ms: ms(dwellMs), to_zone: text(toZone) })
}

/** @param {number | undefined} metres */
export function distanceBucket(metres) {
  if (typeof metres !== 'number' || !Number.isFinite(metres)) return undefined
  if (metres < 0.5) return 'touch'
  if (metres <= 2) return 'near'
  if (metres <= 5) return 'mid'
  return 'far'
}

export function objectViewed({ obj, viewMs, maxScreenFrac, distance }) {
  return compact({ obj, view_ms: ms(viewMs), max_screen_frac: fraction(maxScreenFrac), distance_bucket: distanceBucket(distance) })
}

export function objectGazeDwell({ obj, source, dwellMs, fixations, ttffMs }) {
  return compact({ obj, source: oneOf(source, GAZE_SOURCES) ?? 'head', dwell_ms: ms(dwellMs), fixations: ms(fixations), ttff_ms: ms(ttffMs) })
}

/** object.hovered; hover_ms (how long the pointer rested on it this visit) is an extra property. */
export function objectHovered({ obj, input, hoverMs }) {
  return compact({ obj, input: oneOf(input, INPUTS), hover_ms: ms(hoverMs) })
}

/** What content.impression and content.interacted say of the content shown in a placement. */
function contentRef(shown) {
  const content = shown.content && typeof shown.content === 'object' ? shown.content : {}
  const data = shown.data && typeof shown.data === 'object' ? shown.data : {}
  return {
    placement_id: shown.placement,
    creative_id: text(content.creative_id ?? content.id),
    decision_id: text(shown.decisionId),
    campaign_id: text(content.campaign_id ?? data.campaign_id),
  }
}

export function contentImpression(shown, { visibleMs, maxScreenFrac } = {}) {
  return compact({ ...contentRef(shown), visible_ms: ms(visibleMs), max_screen_frac: fraction(maxScreenFrac) })
}

export function contentInteracted(shown, action) {
  return compact({ ...contentRef(shown), action: oneOf(action, CONTENT_ACTIONS) })
}
