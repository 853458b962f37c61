// The real stack for the integration tests (tests/integration/test_sdk_js.py starts it and
// gives each test file a fresh tenant): the tenant backend's part (API key: rooms,
// sessions, webhook), app users' devices (a CallsClient each, every listener recorded),
// and a TCP proxy that can cut a device off the network.
import net from 'node:net';
import { CallsClient, type ClientEvents } from '../../src/index.js';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests with make test (pytest)`);
  return value;
}

export const API = required('SENDSAR_API_URL');
const API_KEY = required('SENDSAR_API_KEY');
// Mints session tokens of any lifetime, as a tenant backend would (the API's own
// POST /v1/sessions allows 60 s at least).
const SESSIONS = required('SENDSAR_SESSIONS_URL');

export const WAIT_MS = 20_000; // generous: the stack shares two cores with other tests

async function json(reply: Response): Promise<any> {
  const body = await reply.json();
  if (!reply.ok) throw new Error(`${reply.status}: ${JSON.stringify(body)}`);
  return body;
}

/** The tenant's backend: a request with the API key. */
export async function backend(method: string, path: string, body?: object): Promise<any> {
  return json(
    await fetch(API + path, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
  );
}

export async function room(...members: string[]): Promise<string> {
  return (await backend('POST', '/chat/rooms', { members })).id;
}

/** A session token from the API (POST /v1/sessions), as a tenant backend mints them. */
export async function session(userId: string): Promise<string> {
  return (await backend('POST', '/v1/sessions', { userId })).token;
}

/** A session token that expires in `ttlSeconds`. */
export async function shortSession(userId: string, ttlSeconds: number): Promise<string> {
  const reply = await fetch(SESSIONS, {
    method: 'POST',
    body: JSON.stringify({ userId, ttlSeconds }),
  });
  return (await json(reply)).token;
}

/** Polls until `check` holds (or fails the test after WAIT_MS). */
export async function until(check: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

type Recorded = { name: keyof ClientEvents; value: any };

const LISTENERS: Array<keyof ClientEvents> = [
  'callInvite',
  'callAccepted',
  'callDeclined',
  'callEnded',
  'callMissed',
  'callRingStopped',
  'callKnock',
  'connectionChanged',
  'tokenRefreshed',
  'backgroundError',
];

/** An app user's device: a CallsClient with every listener call recorded. */
export class Device {
  readonly client: CallsClient;
  readonly seen: Recorded[] = [];
  sessions = 0; // how often the SDK asked for a session token

  constructor(
    readonly name: string,
    getSessionToken: () => Promise<string>,
    baseUrl = API,
  ) {
    this.client = new CallsClient({
      baseUrl,
      getSessionToken: () => {
        this.sessions += 1;
        return getSessionToken();
      },
    });
    for (const name of LISTENERS) {
      const on = this.client[name].bind(this.client) as (fn: (v: unknown) => void) => void;
      on((value) => this.seen.push({ name, value }));
    }
  }

  static async online(user: string, baseUrl = API): Promise<Device> {
    const device = new Device(user, () => session(user), baseUrl);
    await until(() => device.client.connected, `${user}'s socket`);
    return device;
  }

  /** The events of one listener for one call. */
  of(name: keyof ClientEvents, callId: string): any[] {
    return this.seen
      .filter((r) => r.name === name && r.value?.call?.id === callId)
      .map((r) => r.value);
  }

  async wait(name: keyof ClientEvents, callId: string, count = 1): Promise<any> {
    await until(() => this.of(name, callId).length >= count, `${this.name}: ${name} of ${callId}`);
    return this.of(name, callId)[count - 1];
  }

  close(): void {
    this.client.close();
  }
}

/** A TCP proxy to the API that can cut its clients off (the device's network goes away). */
export class Proxy {
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  private blocked = false;

  private constructor(target: URL) {
    this.server = net.createServer((inbound) => {
      if (this.blocked) return void inbound.destroy();
      const outbound = net.connect(Number(target.port), target.hostname);
      for (const [a, b] of [
        [inbound, outbound],
        [outbound, inbound],
      ] as const) {
        this.open.add(a);
        a.pipe(b);
        a.on('error', () => b.destroy());
        a.on('close', () => {
          this.open.delete(a);
          b.destroy();
        });
      }
    });
  }

  static async start(): Promise<Proxy> {
    const proxy = new Proxy(new URL(API));
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  /** Drops every connection and refuses new ones. */
  cut(): void {
    this.blocked = true;
    for (const socket of this.open) socket.destroy();
  }

  restore(): void {
    this.blocked = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
