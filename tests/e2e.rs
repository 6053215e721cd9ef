//! The end-to-end tests, one module per area, in one test binary. Each area's file says what it covers; `support`
//! holds the servers, corpora and readers they share. Filter by area with the module name, e.g.
//! `cargo nextest run -p lyrics-prep --test e2e e2e_storage::`.

mod support;

#[path = "e2e_faults.rs"]
mod e2e_faults;
#[path = "e2e_formats.rs"]
mod e2e_formats;
#[path = "e2e_gallery.rs"]
mod e2e_gallery;
#[path = "e2e_hardening.rs"]
mod e2e_hardening;
#[path = "e2e_hardening_cli.rs"]
mod e2e_hardening_cli;
#[path = "e2e_hardening_io.rs"]
mod e2e_hardening_io;
#[path = "e2e_local.rs"]
mod e2e_local;
#[path = "e2e_real_models.rs"]
mod e2e_real_models;
#[path = "e2e_refiner.rs"]
mod e2e_refiner;
#[path = "e2e_retry.rs"]
mod e2e_retry;
#[path = "e2e_sam3.rs"]
mod e2e_sam3;
#[path = "e2e_scaleout.rs"]
mod e2e_scaleout;
#[path = "e2e_sql.rs"]
mod e2e_sql;
#[path = "e2e_storage.rs"]
mod e2e_storage;
#[path = "e2e_text.rs"]
mod e2e_text;
#[path = "e2e_web.rs"]
mod e2e_web;
#[path = "e2e_web_scale.rs"]
mod e2e_web_scale;
#[path = "e2e_web_units.rs"]
mod e2e_web_units;
