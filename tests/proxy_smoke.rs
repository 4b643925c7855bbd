mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let inst = common::start(common::Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let conn = inst.conn_string("alice", &token, "disable");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let row = client.query_one("select count(*) from items", &[]).await.unwrap();
    let n: i64 = row.get(0);
    assert_eq!(n, 3);
}
