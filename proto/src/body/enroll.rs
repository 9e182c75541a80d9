//! Enroll Request (27) and Enroll Response (28): a device without a certificate ↔ AS
//! (SPEC §5, new in v2).

use bytes::BufMut;

use crate::codec::{len16, Reader};
use crate::error::{DecodeError, EncodeError};

/// Enroll Request (device → AS, on the one AS connection accepted without a client
/// certificate).
///
/// Body: `0: Device ID Len(16) · 2: Secret Len(16) · 4: CSR Len(16) · 6: Padding(16) = 0
/// · 8: Device ID · Secret · CSR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnrollRequest {
    /// Operator-chosen device name (UTF-8).
    pub device_id: String,
    /// One-time enrollment token or password, as typed by the operator.
    pub secret: Vec<u8>,
    /// PKCS#10 certificate signing request, DER.
    pub csr: Vec<u8>,
}

impl EnrollRequest {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u16(len16("Device ID", self.device_id.len())?);
        w.put_u16(len16("Secret", self.secret.len())?);
        w.put_u16(len16("CSR", self.csr.len())?);
        w.put_u16(0);
        w.put_slice(self.device_id.as_bytes());
        w.put_slice(&self.secret);
        w.put_slice(&self.csr);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (d, s, c) = (r.u16()?, r.u16()?, r.u16()?);
        r.zeros(2, "Enroll Request Padding")?;
        Ok(EnrollRequest {
            device_id: r.utf8(d.into(), "Device ID")?,
            secret: r.vec(s.into())?,
            csr: r.vec(c.into())?,
        })
    }
}

/// Enroll Response (AS → device). The Flag carries the result; on failure both
/// certificates are empty.
///
/// Body: `0: Certificate Len(16) · 2: CA Len(16) · 4: certificate (DER) · CA
/// certificate (DER)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EnrollResponse {
    /// The device's new certificate, DER.
    pub certificate: Vec<u8>,
    /// The deployment CA certificate, DER.
    pub ca_certificate: Vec<u8>,
}

impl EnrollResponse {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u16(len16("Certificate", self.certificate.len())?);
        w.put_u16(len16("CA Certificate", self.ca_certificate.len())?);
        w.put_slice(&self.certificate);
        w.put_slice(&self.ca_certificate);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (c, a) = (r.u16()?, r.u16()?);
        Ok(EnrollResponse {
            certificate: r.vec(c.into())?,
            ca_certificate: r.vec(a.into())?,
        })
    }
}
