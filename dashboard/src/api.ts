// The service, over gRPC-Web on the page's own origin, with the operator's
// token (if any) kept in sessionStorage: for this tab only, gone when it
// closes, never in localStorage or a cookie.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentLifecycle } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { Gateways } from "./gen/missioncontrol/lifecycle/v1/gateways_pb";

const TOKEN_KEY = "mission-control.operator-token";

export function token(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(value: string): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

const bearer: Interceptor = (next) => (request) => {
  const current = token();
  if (current) request.header.set("authorization", `Bearer ${current}`);
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  interceptors: [bearer],
});

export const lifecycle: Client<typeof AgentLifecycle> = createClient(AgentLifecycle, transport);
export const gateways: Client<typeof Gateways> = createClient(Gateways, transport);

export type Access = "admin" | "viewer" | "none";

/// What the current credentials may do. There is no "who am I" call, so
/// the page asks the edge: a WakeAgent with no agent id is refused by role
/// (PERMISSION_DENIED for a viewer) before validation, and by validation
/// (INVALID_ARGUMENT, nothing done) for an admin. Reads are tried first.
export async function probeAccess(): Promise<Access> {
  try {
    await gateways.listGateways({});
  } catch (error) {
    const code = ConnectError.from(error).code;
    if (code === Code.Unauthenticated || code === Code.PermissionDenied) return "none";
    throw error;
  }
  try {
    await lifecycle.wakeAgent({ agentId: "" });
    return "admin";
  } catch (error) {
    const code = ConnectError.from(error).code;
    if (code === Code.PermissionDenied || code === Code.Unauthenticated) return "viewer";
    return "admin";
  }
}

export function describe(error: unknown): string {
  const e = ConnectError.from(error);
  return `${Code[e.code] ?? e.code}: ${e.rawMessage}`;
}
