//! The demo's upstream data: the `shop` database's login roles, tables and sample rows, as the SQL
//! that `timebox demo` feeds to the throwaway cluster with psql.
//!
//! Where it sits: under [`crate::demo`], outside the serving path. What it must never do: let an
//! upstream password reach the server log (every script starts with `SET log_statement = 'none'`).

use std::fmt::Write as _;

use super::{Secrets, ADMIN_ROLE, DATABASE, READ_ROLE, WRITE_ROLE};

/// Sample rows of `customers`: (name, email, city).
pub const CUSTOMERS: &[(&str, &str, &str)] = &[
    ("Ada Lovelace", "ada@example.com", "London"),
    ("Alan Turing", "alan@example.com", "Manchester"),
    ("Grace Hopper", "grace@example.com", "Arlington"),
    ("Edsger Dijkstra", "edsger@example.com", "Eindhoven"),
    ("Barbara Liskov", "barbara@example.com", "Boston"),
    ("Donald Knuth", "don@example.com", "Stanford"),
    ("Frances Allen", "fran@example.com", "Peru, NY"),
    ("Ken Thompson", "ken@example.com", "Murray Hill"),
    ("Margaret Hamilton", "margaret@example.com", "Cambridge"),
    ("Niklaus Wirth", "niklaus@example.com", "Zurich"),
    ("Radia Perlman", "radia@example.com", "Seattle"),
    ("Michael Stonebraker", "mike@example.com", "Berkeley"),
];

/// Sample rows of `products`: (name, price, stock).
pub const PRODUCTS: &[(&str, &str, i32)] = &[
    ("Mechanical keyboard", "129.00", 40),
    ("Ergonomic mouse", "59.50", 75),
    ("27\" monitor", "319.99", 12),
    ("USB-C dock", "189.00", 20),
    ("Laptop stand", "45.00", 60),
    ("Noise-cancelling headphones", "249.00", 18),
    ("Webcam", "89.90", 33),
    ("Desk lamp", "39.00", 50),
    ("Standing desk", "599.00", 5),
    ("Notebook (paper)", "4.50", 300),
];

/// Sample rows of `orders`: (customer id, product id, quantity, status, days ago).
pub const ORDERS: &[(i32, i32, i32, &str, i32)] = &[
    (1, 1, 1, "shipped", 30),
    (1, 8, 2, "shipped", 29),
    (2, 3, 2, "delivered", 25),
    (3, 10, 12, "delivered", 24),
    (4, 2, 1, "delivered", 21),
    (5, 9, 1, "shipped", 18),
    (5, 5, 1, "shipped", 18),
    (6, 10, 40, "delivered", 15),
    (7, 6, 1, "cancelled", 14),
    (8, 4, 1, "shipped", 12),
    (9, 7, 2, "shipped", 10),
    (10, 1, 3, "pending", 7),
    (11, 3, 1, "pending", 6),
    (12, 6, 1, "pending", 5),
    (2, 5, 2, "pending", 4),
    (3, 2, 1, "pending", 3),
    (4, 8, 1, "pending", 2),
    (6, 9, 1, "pending", 2),
    (9, 10, 5, "pending", 1),
    (12, 4, 1, "pending", 0),
];
/// The upstream login roles and the `shop` database; run in database `postgres`. Statement logging
/// is off for this session so the passwords do not reach the server log.
pub(super) fn roles_sql(s: &Secrets) -> String {
    format!(
        "SET log_statement = 'none';\n\
         CREATE ROLE {READ_ROLE} LOGIN PASSWORD {read};\n\
         CREATE ROLE {WRITE_ROLE} LOGIN PASSWORD {write};\n\
         CREATE ROLE {ADMIN_ROLE} LOGIN PASSWORD {admin};\n\
         CREATE DATABASE {DATABASE};\n",
        read = sql_literal(&s.read_password),
        write = sql_literal(&s.write_password),
        admin = sql_literal(&s.admin_password),
    )
}

/// Privileges, tables and rows of `shop`; run in database `shop` as the superuser. The tables are
/// created *as* `timebox_admin`, so it owns them (ALTER/DROP work for the `admin` role), and its
/// default privileges give the read and write roles access to them and to anything it creates later.
pub(super) fn shop_sql() -> String {
    let mut sql = format!(
        "SET log_statement = 'none';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO {READ_ROLE}, {WRITE_ROLE};
GRANT ALL ON SCHEMA public TO {ADMIN_ROLE};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN_ROLE} IN SCHEMA public
    GRANT SELECT ON TABLES TO {READ_ROLE};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN_ROLE} IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO {READ_ROLE};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN_ROLE} IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {WRITE_ROLE};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN_ROLE} IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO {WRITE_ROLE};

SET ROLE {ADMIN_ROLE};
CREATE TABLE customers (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    city       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    name  text NOT NULL UNIQUE,
    price numeric(10, 2) NOT NULL CHECK (price >= 0),
    stock integer NOT NULL DEFAULT 0 CHECK (stock >= 0)
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    product_id  integer NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    status      text NOT NULL DEFAULT 'pending',
    ordered_at  timestamptz NOT NULL DEFAULT now()
);
"
    );
    let rows = |values: Vec<String>| values.join(",\n    ");
    let _ = write!(
        sql,
        "INSERT INTO customers (name, email, city) VALUES\n    {};\n",
        rows(
            CUSTOMERS
                .iter()
                .map(|(name, email, city)| format!(
                    "({}, {}, {})",
                    sql_literal(name),
                    sql_literal(email),
                    sql_literal(city)
                ))
                .collect()
        )
    );
    let _ = write!(
        sql,
        "INSERT INTO products (name, price, stock) VALUES\n    {};\n",
        rows(
            PRODUCTS
                .iter()
                .map(|(name, price, stock)| format!("({}, {price}, {stock})", sql_literal(name)))
                .collect()
        )
    );
    let _ = write!(
        sql,
        "INSERT INTO orders (customer_id, product_id, quantity, status, ordered_at) VALUES\n    {};\n",
        rows(
            ORDERS
                .iter()
                .map(|(customer, product, quantity, status, days_ago)| {
                    format!(
                        "({customer}, {product}, {quantity}, {}, now() - interval '{days_ago} days')",
                        sql_literal(status)
                    )
                })
                .collect()
        )
    );
    sql.push_str("RESET ROLE;\n");
    sql
}

/// A SQL string literal (`'` doubled; `standard_conforming_strings` is on).
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::for_tests()
    }

    #[test]
    fn role_sql_hides_passwords_from_the_server_log() {
        let sql = roles_sql(&secrets());
        assert!(sql.starts_with("SET log_statement = 'none';"));
        assert!(sql.contains("PASSWORD 'r\"e''ad\\pw'"), "{sql}");
    }

    #[test]
    fn sample_rows_reference_existing_rows() {
        assert!((10..=20).contains(&CUSTOMERS.len()));
        assert!((10..=20).contains(&PRODUCTS.len()));
        assert!((10..=20).contains(&ORDERS.len()));
        for (customer, product, ..) in ORDERS {
            assert!((1..=CUSTOMERS.len() as i32).contains(customer));
            assert!((1..=PRODUCTS.len() as i32).contains(product));
        }
        let sql = shop_sql();
        assert!(sql.contains("'27\" monitor'"));
        assert!(sql.trim_end().ends_with("RESET ROLE;"));
    }
}
