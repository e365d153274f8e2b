pub mod pf;
