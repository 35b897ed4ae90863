// Sends Segment-spec calls to a Worldflow server with @rudderstack/rudder-sdk-node, unchanged.
//
//   node send-rudder.mjs <host> <writeKey> [--max-retries N] [--timeout-ms N] [--flush-at N]
//                        [--gzip true|false]
//
// <host> and <writeKey> may also come from WF_HOST and WF_WRITE_KEY. The calls come from the
// test as a JSON array on stdin, each {"method": "track", "params": {...}} where params are
// what the library's method takes (messageId included, so the ids are fixed by the test);
// without any (a terminal or empty stdin) one call of each type is sent, with ids rs-i, rs-t, ...
//
// The library gzips by default and then posts with Content-Type
// application/x-www-form-urlencoded (axios's default for a Buffer). It flushes the first event
// on its own, unawaited: without an errorHandler a final non-2xx answer is an unhandled
// rejection that kills the process, so one is always given here.
//
// Prints one JSON line on stdout, last: {"library", "version", "calls", "delivered",
// "errors": [...], "unfinished", "timedOut"}. Anything the library logs goes to stderr.
import { createRequire } from 'node:module'

import { METHODS, parseArgs, readCalls } from './driver.mjs'

console.log = console.info = (...args) => console.error(...args)

const require = createRequire(import.meta.url)
const Analytics = require('@rudderstack/rudder-sdk-node')
const { version } = require('@rudderstack/rudder-sdk-node/package.json')

function describe(err) {
  if (err === undefined || err === null) return null
  if (typeof err !== 'object') return String(err)
  let text = err instanceof Error ? `${err.name}: ${err.message}` : String(err)
  if (err.response) {
    text += ` status=${err.response.status} body=${JSON.stringify(err.response.data)}`
  }
  return text
}

async function main() {
  const opts = parseArgs('send-rudder.mjs', process.argv.slice(2),
    { '--gzip': (value) => ({ gzip: value !== 'false' }) }, { gzip: true })
  const calls = await readCalls('rs')
  const errors = []
  let delivered = 0
  let finished = 0

  const analytics = new Analytics(opts.writeKey, {
    dataPlaneUrl: opts.host,
    logLevel: 'error',
    gzip: opts.gzip,
    retryCount: opts.maxRetries,
    ...(opts.flushAt ? { flushAt: opts.flushAt } : {}),
    errorHandler: (err) => errors.push(`errorHandler: ${describe(err)}`),
  })

  for (const { method, params } of calls) {
    if (!METHODS.includes(method)) throw new Error(`unknown method ${method}`)
    analytics[method](params, (err) => {
      finished++
      if (err) errors.push(`${method} ${params.messageId} callback: ${describe(err)}`)
      else delivered++
    })
  }

  // flush() sends at most flushAt messages and waits for the flush before it: repeat until the
  // queue is empty and nothing is in flight, within the time limit.
  let timedOut = false
  const drain = (async () => {
    while (analytics.queue.length > 0) await analytics.flush()
    await analytics.flush() // queue empty: waits for the request in flight
    // Callbacks run on setImmediate after each request settles.
    while (finished < calls.length) await new Promise((resolve) => setTimeout(resolve, 10))
  })()
  let timer
  await Promise.race([
    drain,
    new Promise((resolve) => {
      timer = setTimeout(() => { timedOut = true; resolve() }, opts.timeoutMs)
    }),
  ])
  clearTimeout(timer)

  return { library: '@rudderstack/rudder-sdk-node', version, calls: calls.length, delivered,
           errors, unfinished: calls.length - finished, timedOut }
}

main().then(
  (summary) => {
    process.stdout.write(`${JSON.stringify(summary)}\n`)
    // No close() in this library: a stuck retry timer must not keep the process alive.
    if (summary.timedOut) process.exit(2)
  },
  (err) => {
    process.stdout.write(`${JSON.stringify({ library: '@rudderstack/rudder-sdk-node', fatal: describe(err) })}\n`)
    process.exitCode = 1
  },
)
