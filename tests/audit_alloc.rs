//! Heap allocations per audit record on the relay's task (issue 13, "Encoding"): `prepare` redacts
//! and serializes every statement and outcome record before it is queued, so what it allocates is
//! paid once per statement. A counting allocator (this test binary's only) counts them on the
//! calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use timebox::audit::event::prepare;
use timebox::audit::{AuditEvent, Decision, Statement, StatementOutcome};
use timebox::config::ParamLogging;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations (and reallocations) `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

/// pgbench's statement as the relay audits it (`-M simple`: no parameters; `-M prepared`: one).
fn pgbench(params: Option<Vec<Option<String>>>) -> AuditEvent {
    AuditEvent::Statement(Statement {
        class: "read".into(),
        decision: Decision::Allow,
        grant_id: "g_3f9a1c2b7d4e5f60".into(),
        params,
        reason: None,
        relations: vec!["public.pgbench_accounts".into()],
        session_id: "s_00000000000000a1".into(),
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;".into(),
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: 42,
        target: "shop".into(),
        user: "alice".into(),
    })
}

/// Regression (issue 13, "Encoding"): `prepare` copied the four indexed columns out of the event
/// (four allocations), grew the payload buffer twice, and rebuilt the parameter list; the event's
/// strings now move into the columns and the payload is written once into a buffer of its size.
#[test]
fn a_statement_record_is_prepared_with_one_allocation_per_record() {
    let simple = pgbench(None);
    let (p, simple) = allocations(move || prepare(simple, ParamLogging::Redacted));
    assert_eq!(p.kind, "statement");

    let bind = pgbench(Some(vec![Some("48213".into())]));
    let (p, bind) = allocations(move || prepare(bind, ParamLogging::Redacted));
    assert!(p.payload.contains("[redacted 5 bytes]"), "{}", p.payload);

    let outcome = AuditEvent::StatementOutcome(StatementOutcome {
        command_tag: Some("SELECT 1".into()),
        duration_us: 120,
        returned: None,
        rows: Some(1),
        session_id: "s_00000000000000a1".into(),
        sqlstate: None,
        statement_id: 42,
    });
    let (p, outcome) = allocations(move || prepare(outcome, ParamLogging::Redacted));
    assert_eq!(p.kind, "statement_outcome");
    assert!(
        simple <= MAX_SIMPLE && bind <= MAX_BIND && outcome <= MAX_OUTCOME,
        "allocations: simple statement {simple}, bind statement {bind}, outcome {outcome}"
    );
}

/// The payload (simple: no parameter to rewrite).
const MAX_SIMPLE: u64 = 1;
/// The payload and the one parameter's text, rewritten in its own buffer (grown once).
const MAX_BIND: u64 = 2;
/// The payload.
const MAX_OUTCOME: u64 = 1;
