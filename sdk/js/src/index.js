// Worldflow's JavaScript SDK: an ES module with no dependencies and no build step.
//
//   import { Worldflow } from '@worldflow/sdk'
//   const wf = Worldflow.init({ host: 'https://worldflow.example', writeKey: 'wk_…', world: 'paris-showroom' })
//   wf.consent({ analytics: true })

export { Worldflow, VERSION, LIBRARY } from './worldflow.js'
export { AttentionTracker } from './attention.js'
export { PURPOSES, objFromTag, distanceBucket } from './events.js'
export { purposesFor } from './consent.js'
export { pushUrl } from './push.js'
export { MemoryStore, IndexedDBStore } from './stores.js'

/**
 * @typedef {object} WorldflowOptions
 * @property {string} host the Worldflow server, e.g. https://worldflow.example (a path prefix is kept)
 * @property {string} writeKey the source's write key
 * @property {string} world the world's id, sent as context.world.id and in push hellos
 * @property {Record<string, boolean>} [consent] the visitor's choices, if already known (a consent manager's)
 * @property {'ui' | 'platform' | 'gpc'} [consentSource] source of `consent` given here
 * @property {string} [policyVersion] the privacy policy version sent with consent.updated
 * @property {boolean} [rememberConsent] keep choices in localStorage for the next visit (true)
 * @property {string} [worldKey] key for the push channel, scoped to the world (defaults to writeKey)
 * @property {boolean} [eventsOverPush] send batches over the push channel while it is open (true)
 * @property {boolean} [rawTelemetry] allow telemetry.* sample batches at all (false)
 * @property {'direct' | 'portal' | 'link' | 'campaign' | 'event'} [entryPoint] for session.started ('direct')
 * @property {string} [campaignId]
 * @property {string} [referrerWorld]
 * @property {string} [appVersion]
 * @property {number} [sessionTimeoutMs] idle time that ends a session (30 minutes)
 * @property {number} [flushAt] queued messages that trigger a send (64)
 * @property {number} [flushIntervalMs] longest a message waits before a send (5000)
 * @property {number} [maxQueueSize] messages kept at most; the oldest are dropped and counted (1000)
 * @property {number} [retryBaseMs] first retry delay (1000), doubling with jitter
 * @property {number} [retryMaxMs] longest retry delay (300000)
 * @property {number} [decisionTtlMs] how long a prefetched decision stays usable (60000)
 * @property {number} [decideTimeoutMs] (2000)
 * @property {number} [reconnectBaseMs] first push reconnect delay (500), doubling with jitter
 * @property {number} [reconnectMaxMs] longest push reconnect delay (30000)
 * @property {object} [context] merged into every message's context
 * @property {any} [THREE] the three.js module, for attention trackers
 * @property {string} [queueName] IndexedDB database name ('worldflow:' + writeKey)
 * @property {string} [storagePrefix] localStorage key prefix ('worldflow.')
 * @property {(error: Error) => void} [onError]
 * @property {import('./clock.js').Clock} [clock] injected time (tests)
 * @property {typeof fetch} [fetch]
 * @property {any} [WebSocket]
 * @property {IDBFactory | null} [indexedDB] null for a memory queue
 * @property {Storage | null} [storage] localStorage, or null for memory
 * @property {any} [window]
 * @property {any} [document]
 * @property {any} [navigator]
 */

/**
 * @typedef {object} AttentionOptions
 * @property {any} camera a THREE.Camera
 * @property {any} scene a THREE.Scene (or any Object3D holding the tagged objects)
 * @property {any} [THREE] the three.js module (or give it once to Worldflow.init)
 * @property {any} [raycaster] a THREE.Raycaster-like object (one is created otherwise)
 * @property {number} [hz] samples per second, at most 10 (10)
 * @property {number} [graceMs] out of view this long ends a visit (1000)
 * @property {number} [minViewMs] least view dwell that sends object.viewed (1000)
 * @property {number} [minGazeMs] least gaze dwell that sends object.gaze_dwell (500)
 * @property {number} [minHoverMs] least hover that sends object.hovered (300)
 * @property {number} [maxGapMs] most time credited between two samples (1000)
 * @property {boolean} [occlusion] test occlusion with rays (true)
 * @property {'head' | 'eye' | false} [gaze] gaze ray: centre of view, an eye-tracking ray, or none ('head')
 * @property {() => ({origin: any, direction: any} | null)} [eyeRay] the eye-tracking ray, for gaze 'eye'
 * @property {any} [domElement] listen to its pointer events for hover
 * @property {() => any[]} [targets] the tagged objects, instead of traversing the scene each sample
 */
