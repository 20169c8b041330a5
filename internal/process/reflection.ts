/**
 * gRPC server reflection (grpc.reflection.v1, and v1alpha for older tools), answered from the
 * protobuf-es descriptors the services are registered with: the services a server serves, and the
 * file descriptors (with their imports) that define a file name, a symbol or an extension. That is
 * what `grpcurl list` / `describe` and Postman-like tools need to call a server without its .proto
 * files. The descriptors are those embedded in the generated code: everything but comments.
 */
import { type DescFile, type DescService, toBinary } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "../../gen/google/rpc/status_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Code } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";

export { ServerReflectionV1, ServerReflectionV1alpha };

/** The fields of a ServerReflectionRequest, the same in v1 and v1alpha. */
interface Request {
  host: string;
  messageRequest:
    | {
        case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices";
        value: string;
      }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: undefined; value?: undefined };
}

/** What one server's reflection knows: its services' files, their imports, and what they define. */
class Index {
  readonly files = new Map<string, DescFile>();
  readonly symbols = new Map<string, DescFile>();
  /** Extension field numbers by the extended message's name. */
  readonly extensions = new Map<string, number[]>();
  private readonly bytes = new Map<DescFile, Uint8Array>();

  constructor(readonly services: readonly DescService[]) {
    for (const service of services) this.addFile(service.file);
    // The types of error details (lib/status-details.ts) are no service's imports, but a tool needs
    // them to show a failed call's ErrorInfo and RetryInfo.
    this.addFile(file_google_rpc_status);
    this.addFile(file_google_rpc_error_details);
  }

  private addFile(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const type of nestedTypes(file)) {
      this.symbols.set(type.typeName, file);
      if (type.kind === "service")
        for (const m of type.methods) this.symbols.set(`${type.typeName}.${m.name}`, file);
      if (type.kind === "message")
        for (const f of type.fields) this.symbols.set(`${type.typeName}.${f.name}`, file);
      if (type.kind === "extension") {
        const numbers = this.extensions.get(type.extendee.typeName) ?? [];
        numbers.push(type.number);
        this.extensions.set(type.extendee.typeName, numbers);
        this.symbols.set(`${type.extendee.typeName}:${type.number}`, file);
      }
    }
    for (const dep of file.dependencies) this.addFile(dep);
  }

  /** `file` serialized, then its imports (transitively) not yet in `sent`, which this adds to. */
  descriptors(file: DescFile, sent: Set<string>): Uint8Array[] {
    const out: Uint8Array[] = [];
    const visit = (f: DescFile, requested: boolean) => {
      if (!requested && sent.has(f.proto.name)) return;
      sent.add(f.proto.name);
      let b = this.bytes.get(f);
      if (!b) {
        b = toBinary(FileDescriptorProtoSchema, f.proto);
        this.bytes.set(f, b);
      }
      out.push(b);
      for (const dep of f.dependencies) visit(dep, false);
    };
    visit(file, true);
    return out;
  }
}

/**
 * The reflection service of a server whose services `services()` returns (read per stream: a
 * process adds its services while it starts). Both protocol versions share this implementation.
 */
export function reflectionImpl(
  services: () => readonly DescService[],
): ServiceImpl<typeof ServerReflectionV1> & ServiceImpl<typeof ServerReflectionV1alpha> {
  let index: Index | undefined;
  const current = () => {
    const now = services();
    if (index?.services.length !== now.length) index = new Index([...now]);
    return index;
  };
  return {
    async *serverReflectionInfo(requests: AsyncIterable<Request>) {
      const sent = new Set<string>();
      for await (const req of requests) yield answer(req, current(), sent);
    },
  };
}

function answer(req: Request, index: Index, sent: Set<string>) {
  const r = req.messageRequest;
  // The question is echoed as plain fields: v1 and v1alpha messages are distinct types.
  const originalRequest = {
    host: req.host,
    messageRequest:
      r.case === "fileContainingExtension"
        ? {
            case: r.case,
            value: { containingType: r.value.containingType, extensionNumber: r.value.extensionNumber },
          }
        : r.case === undefined
          ? { case: undefined }
          : { case: r.case, value: r.value },
  } as const;
  const base = { validHost: req.host, originalRequest };
  const notFound = (what: string) => ({
    ...base,
    messageResponse: {
      case: "errorResponse" as const,
      value: { errorCode: Code.NOT_FOUND, errorMessage: `${what} not found` },
    },
  });
  const files = (file: DescFile | undefined, what: string) =>
    file
      ? {
          ...base,
          messageResponse: {
            case: "fileDescriptorResponse" as const,
            value: { fileDescriptorProto: index.descriptors(file, sent) },
          },
        }
      : notFound(what);
  switch (r.case) {
    case "listServices":
      return {
        ...base,
        messageResponse: {
          case: "listServicesResponse" as const,
          value: { service: index.services.map((s) => ({ name: s.typeName })) },
        },
      };
    case "fileByFilename":
      return files(index.files.get(r.value), `file ${r.value}`);
    case "fileContainingSymbol":
      return files(index.symbols.get(r.value), `symbol ${r.value}`);
    case "fileContainingExtension": {
      const key = `${r.value.containingType}:${r.value.extensionNumber}`;
      return files(index.symbols.get(key), `extension ${key}`);
    }
    case "allExtensionNumbersOfType": {
      if (!index.symbols.has(r.value)) return notFound(`type ${r.value}`);
      return {
        ...base,
        messageResponse: {
          case: "allExtensionNumbersResponse" as const,
          value: { baseTypeName: r.value, extensionNumber: index.extensions.get(r.value) ?? [] },
        },
      };
    }
    default:
      return {
        ...base,
        messageResponse: {
          case: "errorResponse" as const,
          value: { errorCode: Code.INVALID_ARGUMENT, errorMessage: "the request asks nothing" },
        },
      };
  }
}
