// A tiny browser client of the shop. It calls the user service through
// Keel's edge, given in the page's query string as ?edge=http://host:port,
// with both browser protocols: gRPC-Web and Connect (JSON). The page is
// meant to be served from another origin than the edge, so every call is a
// cross-origin fetch the browser lets through only if the edge's CORS
// answers allow it.
//
// It writes a JSON summary into <pre id="result"> and then sets the title
// to "done" (every step behaved) or "failed"; the browser end-to-end test
// (cmd/keel/platform/browser_e2e_test.go) reads both.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { toJson } from "@bufbuild/protobuf";
import { UserSchema, UserService, type User } from "../../gen/ts/shop/user/v1/user_pb.js";

/** UserJSON is a user in the protobuf JSON form, as the summary shows it. */
type UserJSON = { id?: string; email?: string; displayName?: string; createTime?: string };

/** CallError is a failed call as the summary shows it. */
type CallError = { code: string; message: string };

/** Summary is what the page reports. */
type Summary = {
  pageOrigin: string;
  edge: string;
  email: string;
  registered?: UserJSON;
  getUser?: { grpcWeb?: UserJSON; connect?: UserJSON };
  invalidEmail?: { grpcWeb?: CallError; connect?: CallError };
  error?: CallError;
};

function show(summary: Summary, ok: boolean): void {
  const out = document.getElementById("result");
  if (out) out.textContent = JSON.stringify(summary, null, 2);
  document.title = ok ? "done" : "failed";
}

/** codeName spells a Connect code as it appears on the wire: "invalid_argument". */
function codeName(code: Code): string {
  return Code[code].replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase());
}

function callError(err: unknown): CallError {
  const e = ConnectError.from(err);
  return { code: codeName(e.code), message: e.rawMessage };
}

function userJSON(user: User | undefined): UserJSON {
  if (!user) throw new Error("response has no user");
  return toJson(UserSchema, user) as UserJSON;
}

/** registerInvalid registers with an invalid email; only a ConnectError is the expected outcome. */
async function registerInvalid(client: Client<typeof UserService>): Promise<CallError> {
  try {
    await client.register({ email: "not-an-email", password: "correct horse", displayName: "Nobody" });
  } catch (err) {
    return callError(err);
  }
  throw new Error("register with an invalid email succeeded");
}

async function run(summary: Summary): Promise<boolean> {
  const baseUrl = summary.edge;
  const grpcWeb = createClient(UserService, createGrpcWebTransport({ baseUrl }));
  const connect = createClient(UserService, createConnectTransport({ baseUrl }));

  const registered = await grpcWeb.register({
    email: summary.email,
    password: "correct horse",
    displayName: "Browser",
  });
  summary.registered = userJSON(registered.user);
  const id = summary.registered.id ?? "";

  // Reading an account needs a login: the token goes with every call.
  const { accessToken } = await connect.login({ email: summary.email, password: "correct horse" });
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("Authorization", `Bearer ${accessToken}`);
    return await next(req);
  };
  const grpcWebAuthed = createClient(UserService, createGrpcWebTransport({ baseUrl, interceptors: [bearer] }));
  const connectAuthed = createClient(UserService, createConnectTransport({ baseUrl, interceptors: [bearer] }));
  summary.getUser = {
    grpcWeb: userJSON((await grpcWebAuthed.getUser({ id })).user),
    connect: userJSON((await connectAuthed.getUser({ id })).user),
  };
  summary.invalidEmail = {
    grpcWeb: await registerInvalid(grpcWeb),
    connect: await registerInvalid(connect),
  };

  const same = (u?: UserJSON) => JSON.stringify(u) === JSON.stringify(summary.registered);
  const invalid = (e?: CallError) => e?.code === codeName(Code.InvalidArgument) && e.message.includes("email");
  return (
    id !== "" &&
    summary.registered.email === summary.email &&
    same(summary.getUser.grpcWeb) &&
    same(summary.getUser.connect) &&
    invalid(summary.invalidEmail.grpcWeb) &&
    invalid(summary.invalidEmail.connect)
  );
}

const summary: Summary = {
  pageOrigin: location.origin,
  edge: new URLSearchParams(location.search).get("edge") ?? location.origin,
  email: `browser-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`,
};
run(summary).then(
  (ok) => show(summary, ok),
  (err: unknown) => {
    summary.error = callError(err);
    show(summary, false);
  },
);
