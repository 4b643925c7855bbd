//! Login: a client that finished its startup packet authenticates with a grant token (SCRAM),
//! is admitted under a current grant (watched from then on), and gets an upstream session opened
//! with the role's credential. Ends in a [`Session`] ready to relay, or in the FATAL to send.
//! Must never admit a client whose grant is not current, nor start a session whose start is not
//! durable in the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::auth::{self, AuthError};
use super::cancel::UpstreamCancel;
use super::intercept::Interceptor;
use super::relay::{audit_refusal, lexing_problem};
use super::session::Session;
use super::startup::{self, ClientParams, ClientTlsInfo};
use super::stream::ClientStream;
use super::upstream::{self, Upstream, UpstreamError};
use super::wire::{self, PgError};
use super::{ProxyContext, SessionHandle};
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::audit::AuditLog;
use crate::grants::watch::GrantWatch;
use crate::grants::Grant;
use crate::metrics::Metrics;

/// Counts and audits a client that did not finish authenticating before the startup deadline.
pub(crate) fn record_auth_timeout(
    metrics: &Metrics,
    audit: &AuditLog,
    params: &ClientParams,
    peer: SocketAddr,
) {
    metrics.auth_failures_total.with_label_values(&["timeout"]).inc();
    tracing::info!(client.addr = %peer, user = %params.user, "authentication timed out");
    audit_auth_failure(metrics, audit, params, peer, "authentication timed out".into());
}

/// Records a failed login (never the token) in the audit log, best effort: the client is refused
/// either way.
fn audit_auth_failure(
    metrics: &Metrics,
    audit: &AuditLog,
    params: &ClientParams,
    peer: SocketAddr,
    reason: String,
) {
    let event = AuditEvent::AuthFailure(audit_event::AuthFailure {
        client_addr: peer.to_string(),
        reason,
        target: params.target.clone(),
        user: params.user.clone(),
    });
    if let Err(e) = audit.submit(vec![event]) {
        metrics.audit_failures_total.inc();
        tracing::error!(error = %e, "cannot record an authentication failure in the audit log");
    }
}

/// Authenticates the client and admits it under a current grant, watched from now on. `Ok(None)`
/// when the client left quietly; `Err` is the FATAL to send.
pub(crate) async fn authenticate(
    ctx: &Arc<ProxyContext>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: SocketAddr,
) -> Result<Option<(Grant, GrantWatch)>, PgError> {
    let throttle = &ctx.proxy.auth_throttle;
    let auth_failures = &ctx.proxy.metrics.auth_failures_total;
    let reservation = match throttle.reserve(peer.ip(), &params.user, std::time::Instant::now()) {
        Ok(r) => r,
        Err(throttled) => {
            auth_failures.with_label_values(&["throttled"]).inc();
            tracing::warn!(why = %throttled, "authentication throttled");
            return Err(throttled.to_pg_error());
        }
    };
    let grant = match auth::authenticate(client, &ctx.grants, params, tls).await {
        Ok(g) => {
            reservation.release();
            g
        }
        Err(AuthError::Refused {
            kind,
            error,
            reason,
            counts_as_failure,
        }) => {
            if !counts_as_failure {
                reservation.release();
            }
            auth_failures.with_label_values(&[kind.metric_label()]).inc();
            tracing::info!(%reason, code = error.code, "authentication failed");
            audit_auth_failure(&ctx.proxy.metrics, &ctx.audit, params, peer, reason);
            return Err(error);
        }
        Err(AuthError::ClientLeft) => {
            // No proof was evaluated (libpq leaves like this when it has no password).
            reservation.release();
            tracing::debug!("client left during authentication");
            return Ok(None);
        }
        Err(AuthError::Io(e)) => {
            reservation.release();
            tracing::debug!(error = %e, "client connection failed during authentication");
            return Ok(None);
        }
    };
    tracing::Span::current().record("grant.id", grant.id.as_str());

    // Watch first, then re-read: a revocation between authentication and now is not missed.
    let watch = ctx.grants.watches().subscribe(&grant);
    match ctx.grants.get(&grant.id).await {
        Ok(fresh) => ctx.grants.watches().publish(&fresh),
        Err(e) => {
            tracing::error!(error = %e, "grant store unavailable");
            return Err(match &e {
                crate::grants::GrantError::Store(store) => PgError::for_store_error(store),
                _ => PgError::grant_store_unavailable(),
            });
        }
    }
    let grant = watch.current();
    let now = ctx.clock.now();
    if let Some(why) = grant.refusal_at(now) {
        return Err(super::auth::grant_refusal(&grant, now, &why));
    }
    Ok(Some((grant, watch)))
}

/// Opens the upstream session for an admitted client and sends the client its startup answer.
/// `Ok(None)` when the client left meanwhile; `Err` is the FATAL to send.
pub(crate) async fn open_session(
    ctx: &Arc<ProxyContext>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: SocketAddr,
    grant: Grant,
    watch: GrantWatch,
) -> Result<Option<Session>, PgError> {
    let config = &ctx.config;
    let (Some(target), Some(credential)) = (
        config.targets.get(&grant.target),
        config
            .targets
            .get(&grant.target)
            .and_then(|t| t.credentials.get(&grant.role)),
    ) else {
        tracing::error!(role = %grant.role, "grant's target or role is no longer configured");
        return Err(PgError::grant_not_current(&format!(
            "grant {} names target \"{}\" / role \"{}\", which is no longer configured",
            grant.id, grant.target, grant.role
        )));
    };

    let Some(policy) = ctx.proxy.policies.get(&grant.role).cloned() else {
        return Err(PgError::grant_not_current(&format!(
            "grant {} names role \"{}\", which is no longer configured",
            grant.id, grant.role
        )));
    };
    let settings = startup::upstream_settings(&policy, &params.settings)?;
    let interceptor = Interceptor::new(policy, ctx.proxy.classify_cache.clone(), &grant.id, &grant.role)
        .tagging(&grant.user)
        .bench_skip_policy(config.bench.skip_policy())
        .max_statement_bytes(config.proxy.max_statement_bytes);
    let mut settings = settings;
    settings.push((
        "application_name".into(),
        tagged_application_name(&grant, params.application_name.as_deref()),
    ));
    let upstream = connect_upstream(ctx, target, credential, &settings).await?;
    let Upstream {
        stream,
        backend_pid,
        backend_secret,
        parameter_status,
        notices,
        ready_status,
    } = upstream;
    let server_version = parameter_status
        .iter()
        .find(|(name, _)| name == "server_version")
        .map(|(_, value)| value.as_str());
    let functions = match server_version {
        Some(version) => {
            let tls = ctx.proxy.upstream_tls.get(&target.name).cloned().flatten();
            let catalogs = &ctx.proxy.target_catalogs;
            catalogs
                .functions(target, credential, tls, version, &ctx.proxy.salted_passwords)
                .await
        }
        None => None,
    };
    let masking = crate::proxy::relay::mask::session_masking(ctx, target, credential, &grant.role).await?;
    let interceptor = interceptor
        .on_server(server_version)
        .with_target_functions(functions)
        .with_masking(masking);

    check_upstream_settings(&target.name, &parameter_status)?;
    let upstream_cancel = UpstreamCancel {
        host: target.host.clone(),
        port: target.port,
        pid: backend_pid,
        secret: backend_secret,
    };
    let cancel_key = ctx.proxy.cancel_keys.register(upstream_cancel.clone());
    let handle = ctx.proxy.sessions.register(
        &grant,
        peer,
        tls.map(|t| t.version.clone()),
        params.application_name.clone(),
    );
    record_start(ctx, &handle, &grant, params, tls, peer).await?;

    let out = startup_answer(
        &parameter_status,
        &notices,
        (cancel_key.pid, cancel_key.secret),
        ready_status,
    );
    if let Err(e) = client.write_all(&out).await {
        tracing::debug!(error = %e, "client left before the session started");
        return Ok(None);
    }
    tracing::info!(
        role = %grant.role,
        tls = tls.map(|t| t.version.as_str()).unwrap_or("none"),
        expires_at = %grant.expires_at,
        upstream.pid = backend_pid,
        "session started"
    );
    Ok(Some(Session {
        ctx: ctx.clone(),
        handle,
        grant,
        watch,
        upstream: stream,
        upstream_cancel,
        _cancel_key: cancel_key,
        interceptor,
        statement_seq: 0,
    }))
}

/// Logs in upstream with the role's credential; counts a failure by kind and turns it into the
/// FATAL the client gets.
async fn connect_upstream(
    ctx: &ProxyContext,
    target: &crate::config::Target,
    credential: &crate::config::Credential,
    settings: &[(String, String)],
) -> Result<Upstream, PgError> {
    let config = &ctx.config;
    let upstream_tls = ctx.proxy.upstream_tls.get(&target.name).cloned().flatten();
    let connected = upstream::connect(
        target,
        credential,
        upstream_tls,
        settings,
        config.proxy.upstream_connect_timeout,
        &ctx.proxy.salted_passwords,
    )
    .await;
    connected.map_err(|e| {
        tracing::warn!(error = %e, host = %target.host, port = target.port, "upstream connection failed");
        ctx.proxy
            .metrics
            .upstream_connect_errors_total
            .with_label_values(&[&target.name, connect_error_kind(&e)])
            .inc();
        match &e {
            UpstreamError::Rejected { code, .. } => PgError::upstream_rejected(&target.name, code),
            _ => PgError::upstream_unavailable(&target.name, &e.client_reason()),
        }
    })
}

/// The `kind` label of `timebox_upstream_connect_errors_total` for a failed upstream login.
fn connect_error_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Timeout(_) => "timeout",
        UpstreamError::Connect(_) => "connect",
        UpstreamError::TlsRefused | UpstreamError::Tls(_) | UpstreamError::ServerName(_) => "tls",
        UpstreamError::Rejected { .. } | UpstreamError::NoPassword | UpstreamError::UnsupportedAuth(_) => {
            "rejected"
        }
        UpstreamError::Protocol(_) | UpstreamError::Io(_) => "protocol",
    }
}

/// Refuses an upstream session whose settings change how SQL text is lexed (timebox could not
/// read its statements as the server does).
fn check_upstream_settings(target: &str, parameter_status: &[(String, String)]) -> Result<(), PgError> {
    for (name, value) in parameter_status {
        let mut frame = BytesMut::new();
        wire::parameter_status(&mut frame, name, value);
        if let Some(problem) = lexing_problem(&frame) {
            tracing::error!(%problem, "upstream session uses settings timebox cannot read statements under");
            return Err(PgError::object_not_in_prerequisite_state(format!("target \"{target}\" cannot be used: {problem}"))
                .with_hint("Tell the timebox administrators: the upstream role or database overrides a setting that must stay at its default."));
        }
    }
    Ok(())
}

/// Records the session start, durable before the session goes on (not waiting for the index:
/// the relay never does). On failure the session is unregistered and the FATAL returned.
async fn record_start(
    ctx: &ProxyContext,
    handle: &SessionHandle,
    grant: &Grant,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: SocketAddr,
) -> Result<(), PgError> {
    let start = AuditEvent::SessionStart(audit_event::SessionStart {
        application_name: params.application_name.clone(),
        client_addr: peer.to_string(),
        grant_id: grant.id.clone(),
        role: grant.role.clone(),
        session_id: handle.name(),
        target: grant.target.clone(),
        tls_version: tls.map(|t| t.version.clone()),
        user: grant.user.clone(),
    });
    ctx.audit.record_durable(vec![start]).await.map_err(|e| {
        ctx.proxy.sessions.remove(handle.id);
        ctx.proxy.metrics.audit_failures_total.inc();
        tracing::error!(error = %e, "cannot record the session start in the audit log");
        audit_refusal(&e)
    })
}

/// The client's startup answer: AuthenticationOk, the upstream's ParameterStatus and notices,
/// timebox's own cancel key (never the upstream's) and ReadyForQuery.
fn startup_answer(
    parameter_status: &[(String, String)],
    notices: &[u8],
    (pid, secret): (i32, i32),
    ready_status: u8,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(512);
    wire::authentication_ok(&mut out);
    for (name, value) in parameter_status {
        wire::parameter_status(&mut out, name, value);
    }
    out.extend_from_slice(notices);
    wire::backend_key_data(&mut out, pid, secret);
    wire::frame(&mut out, b'Z', |b| b.extend_from_slice(&[ready_status]));
    out
}

/// `timebox:<user>:<grant id>[:<client's application_name>]`, at most 63 bytes (PostgreSQL's limit).
/// Later changes keep the tag too: see [`crate::policy::appname`].
pub fn tagged_application_name(grant: &Grant, client_name: Option<&str>) -> String {
    let tag = crate::policy::appname::session_tag(&grant.user, &grant.id);
    crate::policy::appname::tagged(&tag, client_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        let now = chrono::Utc::now();
        Grant {
            id: "g_0123456789abcdef".into(),
            user: "alice".into(),
            target: "shop".into(),
            role: "read".into(),
            reason: "r".into(),
            created_by: "ops".into(),
            created_at: now,
            starts_at: now,
            expires_at: now,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn application_name_names_engineer_and_grant_and_fits() {
        let g = grant();
        assert_eq!(
            tagged_application_name(&g, None),
            "timebox:alice:g_0123456789abcdef"
        );
        assert_eq!(
            tagged_application_name(&g, Some("psql")),
            "timebox:alice:g_0123456789abcdef:psql"
        );
        let long = tagged_application_name(&g, Some(&"é".repeat(40)));
        assert!(long.len() <= 63, "{}", long.len());
        assert!(long.starts_with("timebox:alice:g_0123456789abcdef:"));
    }

    #[test]
    fn the_startup_answer_carries_timeboxs_cancel_key_and_ends_ready() {
        let status = vec![("server_version".to_owned(), "15.4".to_owned())];
        let out = startup_answer(&status, b"", (7, 9), b'I');
        assert_eq!(&out[..9], &[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        let key = out
            .windows(13)
            .position(|w| w[0] == b'K')
            .expect("BackendKeyData");
        assert_eq!(&out[key + 5..key + 13], &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(&out[out.len() - 6..], &[b'Z', 0, 0, 0, 5, b'I']);
    }
}
