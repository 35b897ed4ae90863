// Page lifecycle: hidden and visible again (visibilitychange), gone (pagehide), and back
// from the back-forward cache (pageshow with persisted). Returns a function that unbinds.

/**
 * @param {{window?: EventTarget | null, document?: (EventTarget & {visibilityState?: string}) | null,
 *   onHidden: () => void, onVisible: () => void, onPageHide: () => void, onPageShow: () => void}} options
 */
export function watchLifecycle({ window, document, onHidden, onVisible, onPageHide, onPageShow }) {
  const visibility = () => (document?.visibilityState === 'hidden' ? onHidden() : onVisible())
  const pagehide = () => onPageHide()
  const pageshow = (event) => {
    if (event?.persisted) onPageShow()
  }
  document?.addEventListener?.('visibilitychange', visibility)
  window?.addEventListener?.('pagehide', pagehide)
  window?.addEventListener?.('pageshow', pageshow)
  return () => {
    document?.removeEventListener?.('visibilitychange', visibility)
    window?.removeEventListener?.('pagehide', pagehide)
    window?.removeEventListener?.('pageshow', pageshow)
  }
}
