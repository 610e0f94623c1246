//! [`WsConfig`]: limits and timers of the `hub` WebSocket front end.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The smallest outbound queue accepted: room for the largest burst one
/// request can produce (an `SCMobileNum` and twenty `PushMobileNum`) plus
/// pushes and pings.
pub const MIN_OUTBOUND_QUEUE: usize = 64;

/// Limits and timers of the `hub` WebSocket front end; every number is
/// configuration with these defaults (see [`WsConfig::default`]).
///
/// The defaults keep one idle connection small (a few KiB of buffers) so tens
/// of thousands of sessions fit in a modest process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest incoming message, in bytes (64 KiB). A larger one closes the
    /// connection with close code 1009. tungstenite's own default is 64 MiB.
    pub max_message_size: usize,
    /// Largest incoming frame payload, in bytes (16 KiB). tungstenite's own
    /// default is 16 MiB.
    pub max_frame_size: usize,
    /// tungstenite's read buffer per connection, in bytes (2 KiB: the
    /// largest ordinary request, a `CSSendMsg` of 500 characters, fits; a
    /// larger frame grows it as needed. tungstenite's own default is
    /// 128 KiB, eagerly allocated). Held by every connection, idle or not.
    pub read_buffer_size: usize,
    /// Bytes buffered before tungstenite writes to the socket (4 KiB). Every
    /// batch of frames is flushed anyway.
    pub write_buffer_size: usize,
    /// Frames waiting to be written per connection (256; at least
    /// [`MIN_OUTBOUND_QUEUE`]). While it is nearly full the connection stops
    /// reading requests and taking events, so a client that does not read
    /// cannot make the server buffer without bound.
    pub outbound_queue: usize,
    /// Capacity of the per-session event subscription (64). A session whose
    /// subscription overflows is dropped by the event hub and closed (close
    /// code 1013); undelivered messages stay in the user's mailbox.
    pub event_queue: usize,
    /// How often the server pings the client (30 s).
    pub ping_interval: Duration,
    /// A connection from which nothing (no frame, no pong) arrived for this
    /// long is closed (90 s).
    pub idle_timeout: Duration,
    /// Bad frames (answered with `-101` or `-102`) allowed within
    /// [`bad_frame_window`](Self::bad_frame_window) (20); one more closes the
    /// connection with close code 1008.
    pub bad_frame_limit: usize,
    /// The window the bad-frame limit counts over (1 minute).
    pub bad_frame_window: Duration,
    /// Time allowed to flush the last frames and finish the close handshake
    /// when the server closes a connection (5 s).
    pub close_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_frame_size: 16 * 1024,
            read_buffer_size: 2 * 1024,
            write_buffer_size: 4 * 1024,
            outbound_queue: 256,
            event_queue: 64,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            bad_frame_limit: 20,
            bad_frame_window: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
        }
    }
}

impl WsConfig {
    /// The tungstenite configuration these limits translate to.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(256))
            .write_buffer_size(self.write_buffer_size)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }

    /// The outbound queue capacity actually used (never below
    /// [`MIN_OUTBOUND_QUEUE`]).
    pub fn effective_outbound_queue(&self) -> usize {
        self.outbound_queue.max(MIN_OUTBOUND_QUEUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_translate() {
        let c = WsConfig::default();
        let ws = c.websocket_config();
        assert_eq!(ws.max_message_size, Some(65_536));
        assert_eq!(ws.max_frame_size, Some(16_384));
        assert_eq!(ws.read_buffer_size, 2_048);
        assert_eq!(ws.write_buffer_size, 4_096);
        assert_eq!(c.effective_outbound_queue(), 256);
        let tiny = WsConfig {
            outbound_queue: 1,
            ..WsConfig::default()
        };
        assert_eq!(tiny.effective_outbound_queue(), MIN_OUTBOUND_QUEUE);
    }
}
