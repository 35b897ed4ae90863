// Identifiers: message ids (UUIDv4, the server's dedup key) and session ids (UUIDv7, which
// sort by start time). Both use the platform's cryptographic random source.

function randomBytes(count) {
  const bytes = new Uint8Array(count)
  globalThis.crypto.getRandomValues(bytes)
  return bytes
}

function format(bytes) {
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

/** A random UUID (version 4). */
export function uuid4() {
  if (typeof globalThis.crypto?.randomUUID === 'function') return globalThis.crypto.randomUUID()
  const bytes = randomBytes(16)
  bytes[6] = (bytes[6] & 0x0f) | 0x40
  bytes[8] = (bytes[8] & 0x3f) | 0x80
  return format(bytes)
}

/**
 * A time-ordered UUID (version 7) for `ms`, milliseconds since the epoch.
 * @param {number} ms
 */
export function uuid7(ms) {
  const bytes = randomBytes(16)
  let time = Math.max(0, Math.floor(ms))
  for (let i = 5; i >= 0; i--) {
    bytes[i] = time % 256
    time = Math.floor(time / 256)
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x70
  bytes[8] = (bytes[8] & 0x3f) | 0x80
  return format(bytes)
}
