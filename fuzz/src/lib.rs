//! The fuzz targets' shared code: see `exercise`.

pub mod exercise;
