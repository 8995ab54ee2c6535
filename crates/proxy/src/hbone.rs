//! HBONE: HTTP/2 CONNECT tunnels over mutual TLS (in progress).
