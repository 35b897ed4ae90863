// Sends Segment calls to a Worldflow server with @segment/analytics-node, unchanged.
//
//   node send-segment.mjs <host> <writeKey> [--max-retries N] [--timeout-ms N] [--flush-at N]
//
// <host> and <writeKey> may also come from WF_HOST and WF_WRITE_KEY. The calls come from the
// test as a JSON array on stdin, each {"method": "track", "params": {...}} where params are
// what the library's method takes (messageId included, so the ids are fixed by the test);
// without any (a terminal or empty stdin) one call of each type is sent, with ids seg-i, seg-t, ...
//
// Prints one JSON line on stdout, last: {"library", "version", "calls", "delivered",
// "errors": [...], "unfinished"}. Anything the library logs goes to stderr.
import { createRequire } from 'node:module'

import { METHODS, parseArgs, readCalls } from './driver.mjs'

console.log = console.info = (...args) => console.error(...args)

const require = createRequire(import.meta.url)
const { Analytics } = require('@segment/analytics-node')
const { version } = require('@segment/analytics-node/package.json')

function describe(err) {
  if (err === undefined || err === null) return null
  if (typeof err !== 'object') return String(err)
  const reason = err.reason ?? err
  const text = reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason)
  return err.code ? `${err.code}: ${text}` : text
}

async function main() {
  const opts = parseArgs('send-segment.mjs', process.argv.slice(2))
  const calls = await readCalls('seg')
  const errors = []
  let delivered = 0
  let finished = 0

  const analytics = new Analytics({
    writeKey: opts.writeKey,
    host: opts.host,
    maxRetries: opts.maxRetries,
    ...(opts.flushAt ? { flushAt: opts.flushAt } : {}),
  })
  analytics.on('error', (err) => errors.push(`error event: ${describe(err)}`))

  for (const { method, params } of calls) {
    if (!METHODS.includes(method)) throw new Error(`unknown method ${method}`)
    analytics[method](params, (err) => {
      finished++
      if (err) errors.push(`${method} ${params.messageId} callback: ${describe(err)}`)
      else delivered++
    })
  }
  // Sends what is queued now and waits for every callback; on timeout it aborts the retries.
  await analytics.closeAndFlush({ timeout: opts.timeoutMs })

  return { library: '@segment/analytics-node', version, calls: calls.length, delivered,
           errors, unfinished: calls.length - finished }
}

main().then(
  (summary) => process.stdout.write(`${JSON.stringify(summary)}\n`),
  (err) => {
    process.stdout.write(`${JSON.stringify({ library: '@segment/analytics-node', fatal: describe(err) })}\n`)
    process.exitCode = 1
  },
)
