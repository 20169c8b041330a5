/**
 * gRPC's rich error model: a failed call's trailers carry `grpc-status-details-bin`, a serialized
 * google.rpc.Status whose details hold a google.rpc.ErrorInfo (Switchboard's stable reason, its
 * domain and the occurrence's metadata) and, when a retry makes sense, a google.rpc.RetryInfo. Any
 * gRPC client with error-details support (grpcurl, grpc-go's status package, Connect, ...) reads
 * them; our own clients turn them back into the SwitchboardError that was thrown, so a reason
 * survives every hop between processes.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyPack, anyUnpack, durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { ERROR_DOMAIN, type SwitchboardError } from "./errors.js";

/** The trailer gRPC reserves for a serialized google.rpc.Status. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** What an error's details say, decoded. */
export interface ErrorDetails {
  /** The gRPC code the Status repeats. */
  code: number;
  reason: string;
  domain: string;
  metadata: Record<string, string>;
  /** From RetryInfo; 0 without one. */
  retryAfterMs: number;
}

export function encodeStatusDetails(err: SwitchboardError): Buffer {
  const details = [
    anyPack(
      ErrorInfoSchema,
      create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN, metadata: { ...err.metadata } }),
    ),
  ];
  if (err.retryAfterMs > 0)
    details.push(
      anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(err.retryAfterMs) })),
    );
  return Buffer.from(
    toBinary(StatusSchema, create(StatusSchema, { code: err.code, message: err.publicMessage, details })),
  );
}

/**
 * Decodes a `grpc-status-details-bin` value; undefined when it holds no ErrorInfo (a peer that
 * sends other details, or none) or cannot be parsed: the caller then falls back to the status code.
 */
export function decodeStatusDetails(bytes: Uint8Array): ErrorDetails | undefined {
  let status: ReturnType<typeof fromBinary<typeof StatusSchema>>;
  try {
    status = fromBinary(StatusSchema, bytes);
  } catch {
    return undefined;
  }
  let info: ReturnType<typeof anyUnpack<typeof ErrorInfoSchema>>;
  let retryAfterMs = 0;
  for (const any of status.details) {
    try {
      info ??= anyUnpack(any, ErrorInfoSchema);
      const retry = anyUnpack(any, RetryInfoSchema);
      if (retry?.retryDelay) retryAfterMs = Math.max(0, Math.round(durationMs(retry.retryDelay)));
    } catch {
      // A detail that names our type but does not parse as it: ignore that one detail.
    }
  }
  if (!info) return undefined;
  return {
    code: status.code,
    reason: info.reason,
    domain: info.domain,
    metadata: { ...info.metadata },
    retryAfterMs,
  };
}
