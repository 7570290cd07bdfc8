//! Integration tests, in one binary so the crate links once.

mod audit;
mod backfill;
mod cli;
mod crash;
mod delta;
mod faults;
mod fixture;
mod gc;
mod iceberg;
mod job;
mod merge;
mod merge_processes;
mod progress;
mod props;
mod publish;
mod s3;
mod store;
