// The public REST API, called from the browser with the user's session token (CORS when
// the page and the API are on different origins). Errors keep the API's ErrorInfo reason.

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const info = (body.details || []).find((d) => (d['@type'] || '').endsWith('ErrorInfo'));
    super(`${status} ${info ? info.reason : ''}: ${body.message || 'request failed'}`);
    this.status = status;
    this.reason = info ? info.reason : '';
    this.requestId = requestId;
  }
}

export function client(baseUrl, token) {
  async function call(method, path, body) {
    const headers = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const reply = await fetch(baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new ApiError(reply.status, data, reply.headers.get('x-request-id'));
    return data;
  }

  const calls = (roomId) => `/chat/rooms/${roomId}/calls`;
  return {
    activeCall: (roomId) => call('GET', `${calls(roomId)}/active`),
    start: (roomId, type) => call('POST', calls(roomId), { type }),
    accept: (roomId, callId) => call('POST', `${calls(roomId)}/${callId}/accept`, {}),
    decline: (roomId, callId) => call('POST', `${calls(roomId)}/${callId}/decline`, {}),
    end: (roomId, callId, reason) =>
      call('POST', `${calls(roomId)}/${callId}/end`, reason ? { reason } : {}),
    leave: (roomId, callId) => call('POST', `${calls(roomId)}/${callId}/leave`, {}),
    messages: (roomId) => call('GET', `/chat/rooms/${roomId}/messages?pageSize=20`),
  };
}
