// Every document the portal sends to /graphql.  Each one must validate against the contract,
// docs/portal-schema.graphql, and stay within the server's default cost limit
// (tests/unit/test_portal_page.py checks both): keep one exported constant per document, a
// template literal without interpolation, ending with a semicolon.
//
// Page sizes are literals: the server estimates a `first` given as a variable at the largest
// page size, so a literal keeps a page's estimated cost to what it really asks for.

export const ME = `query Me {
  me { id name kind status reinsurerCode distributorCode grants createdAt }
}`;

export const ENDPOINTS = `query Endpoints {
  endpoints {
    id url description events active ordered maxConcurrency rateLimitPerS
    disabledReason disabledAt failingSince secretRotationExpiresAt createdAt updatedAt
    health { successRate attempts failures windowHours breakerState lastAttemptAt lastSuccessAt disabledReason }
  }
}`;

export const EVENT_TYPES = `query EventTypes {
  eventTypes { eventType withheld schema example }
}`;

export const DELIVERIES = `query Deliveries($after: String, $filter: DeliveryFilter) {
  deliveries(first: 20, after: $after, filter: $filter) {
    edges {
      cursor
      node {
        id webhookId endpointId eventId eventType attempt status httpStatus latencyMs
        error responseBody attemptedAt urlHost nextStep
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}`;

export const MESSAGE = `query Message($webhookId: ID!) {
  message(webhookId: $webhookId) {
    webhookId endpointId eventType eventId
    request { headers { name value } body }
    attempts {
      id webhookId endpointId eventId eventType attempt status httpStatus latencyMs
      error responseBody attemptedAt urlHost nextStep
    }
  }
}`;

export const BORDEREAUX = `query Bordereaux($after: String, $filter: BordereauFilter) {
  bordereaux(first: 20, after: $after, filter: $filter) {
    edges {
      cursor
      node {
        reportId reportType treatyNumber treatyType periodId periodFrom periodTo cedantCode
        settlementCurrency rowCount adjustmentCount cededTotal
        deliveries { status acknowledgedAt duplicate error }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}`;

export const DOWNLOAD = `query Download($reportId: ID!, $format: DownloadFormat!) {
  bordereau(reportId: $reportId) { reportId download(format: $format) }
}`;

export const CREATE_ENDPOINT = `mutation CreateEndpoint($input: CreateEndpointInput!) {
  createEndpoint(input: $input) { endpoint { id url } secret }
}`;

export const DISABLE_ENDPOINT = `mutation DisableEndpoint($id: ID!, $reason: String) {
  disableEndpoint(id: $id, reason: $reason) { id active disabledReason }
}`;

export const ENABLE_ENDPOINT = `mutation EnableEndpoint($id: ID!) {
  enableEndpoint(id: $id) { id active disabledReason }
}`;

export const ROTATE_SECRET = `mutation RotateSecret($id: ID!) {
  rotateSecret(id: $id) { endpoint { id url } secret previousExpiresAt }
}`;

export const SEND_TEST_EVENT = `mutation SendTestEvent($endpointId: ID!) {
  sendTestEvent(endpointId: $endpointId) { webhookId eventId endpointId }
}`;

export const REDELIVER = `mutation Redeliver($endpointId: ID!, $webhookId: ID!) {
  redeliver(endpointId: $endpointId, webhookId: $webhookId) { queued webhookIds caughtUp }
}`;

export const FEED = `subscription Feed($endpointId: ID, $eventTypes: [String!]) {
  feed(endpointId: $endpointId, eventTypes: $eventTypes) {
    __typename
    ... on FeedEvent { endpointId webhookId eventType eventId at }
    ... on FeedOutcome {
      attempt { id webhookId endpointId eventType attempt status httpStatus latencyMs attemptedAt urlHost nextStep }
    }
  }
}`;
