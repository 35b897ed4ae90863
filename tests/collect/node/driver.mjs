// What both library drivers share: their command line and the calls they are told to send.

export const METHODS = ['track', 'identify', 'page', 'screen', 'group', 'alias']

// <host> <writeKey> [--max-retries N] [--timeout-ms N] [--flush-at N] plus the `flags` given
// (name → parser of its value); host and key may also come from WF_HOST and WF_WRITE_KEY.
export function parseArgs(script, argv, flags = {}, defaults = {}) {
  const positional = []
  const opts = { maxRetries: 3, timeoutMs: 30000, flushAt: undefined, ...defaults }
  const numeric = { '--max-retries': 'maxRetries', '--timeout-ms': 'timeoutMs', '--flush-at': 'flushAt' }
  for (let i = 0; i < argv.length; i++) {
    if (numeric[argv[i]]) opts[numeric[argv[i]]] = Number(argv[++i])
    else if (flags[argv[i]]) Object.assign(opts, flags[argv[i]](argv[++i]))
    else if (argv[i].startsWith('--')) throw new Error(`unknown option ${argv[i]}`)
    else positional.push(argv[i])
  }
  opts.host = positional[0] || process.env.WF_HOST
  opts.writeKey = positional[1] || process.env.WF_WRITE_KEY
  if (!opts.host || !opts.writeKey) {
    throw new Error(`usage: ${script} <host> <writeKey> [options], or WF_HOST and WF_WRITE_KEY`)
  }
  return opts
}

// The JSON array of {"method", "params"} on stdin; without one, a call of each type with ids
// `${prefix}-i`, `${prefix}-t`, ...
export async function readCalls(prefix) {
  // Not readFileSync(0): it fails with EAGAIN on a large piped stdin.
  let text = ''
  if (!process.stdin.isTTY) {
    process.stdin.setEncoding('utf8')
    for await (const chunk of process.stdin) text += chunk
  }
  if (!text.trim()) {
    return [
      { method: 'identify', params: { messageId: `${prefix}-i`, userId: 'u1', traits: { plan: 'gold' } } },
      { method: 'track', params: { messageId: `${prefix}-t`, userId: 'u1', event: 'zone.entered',
                                   properties: { zone_id: 'lobby' } } },
      { method: 'page', params: { messageId: `${prefix}-p`, userId: 'u1', category: 'docs', name: 'Intro' } },
      { method: 'screen', params: { messageId: `${prefix}-s`, userId: 'u1', name: 'Cart' } },
      { method: 'group', params: { messageId: `${prefix}-g`, userId: 'u1', groupId: 'team-1' } },
      { method: 'alias', params: { messageId: `${prefix}-a`, userId: 'u1', previousId: 'anon-1' } },
    ]
  }
  return JSON.parse(text)
}
