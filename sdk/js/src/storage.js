// Small key-value storage: localStorage when the page has it (and it works: private modes
// and sandboxed frames throw), else memory for the life of the page.

export class KeyValue {
  #memory = new Map()

  /** @param {Storage | undefined | null} storage */
  constructor(storage, prefix = 'worldflow.') {
    this.storage = storage ?? null
    this.prefix = prefix
  }

  get(key) {
    try {
      if (this.storage) return this.storage.getItem(this.prefix + key)
    } catch {
      // fall through to memory
    }
    return this.#memory.get(key) ?? null
  }

  set(key, value) {
    this.#memory.set(key, value)
    try {
      this.storage?.setItem(this.prefix + key, value)
    } catch {
      // quota or access refused: memory keeps it
    }
  }

  remove(key) {
    this.#memory.delete(key)
    try {
      this.storage?.removeItem(this.prefix + key)
    } catch {
      // nothing stored there
    }
  }

  getJSON(key) {
    try {
      return JSON.parse(this.get(key) ?? 'null')
    } catch {
      return null
    }
  }

  setJSON(key, value) {
    this.set(key, JSON.stringify(value))
  }
}
