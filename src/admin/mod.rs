//! Admin HTTP API (placeholder until the admin module lands).
use std::sync::Arc;

use crate::app::AppState;

pub fn router(_state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
}
