//! `/v1/instances`: the fleet's instances as the shared store knows them (issue 11 item 2).
//!
//! Reads the `instances` rows ([`crate::fleet::Fleet::instances`]): each with its advertised
//! address, version, start, last heartbeat, sessions at that heartbeat and whether it is alive
//! (heartbeat within `[fleet] instance_timeout`, by the store's clock). With the SQLite store there
//! is no fleet: the answer says so (`fleet: false`) with this instance alone left out rather than
//! invented. Roles: `admin`, `auditor`. It must never show a store credential.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, AUDITOR};
use super::error::{ApiError, ErrorResponse};
use crate::app::AppState;
pub use crate::store::postgres::fleet::InstanceRow;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    /// Whether this instance is part of a fleet (a PostgreSQL store); `false` with SQLite.
    pub fleet: bool,
    /// The instance that answered (absent without a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this_instance: Option<String>,
    /// Every registered instance, live or not, by name.
    pub instances: Vec<InstanceRow>,
}

/// The fleet's instances (roles `admin`, `auditor`).
#[utoipa::path(get, path = "/v1/instances", tag = "instances", security(("bearer" = [])),
    responses((status = 200, body = InstanceList), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> Result<Json<InstanceList>, ApiError> {
    principal.require_any(&[ADMIN, AUDITOR], "listing instances")?;
    Ok(Json(instance_list(&state).await?))
}

/// What `GET /v1/instances` answers (also for an in-process caller such as the CLI's
/// `timebox instance list`).
pub async fn instance_list(state: &AppState) -> Result<InstanceList, crate::store::StoreError> {
    Ok(match &state.fleet {
        None => InstanceList {
            fleet: false,
            this_instance: None,
            instances: Vec::new(),
        },
        Some(fleet) => InstanceList {
            fleet: true,
            this_instance: Some(fleet.instance().to_owned()),
            instances: fleet.instances().await?,
        },
    })
}
