package idemhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Problem types (RFC 9457) of the errors the middleware answers with. Each
// is the "type" member of an application/problem+json body, whose "title"
// names the problem and whose "detail" says what was wrong with this
// request.
//
// The constants are the types under the default Options.ProblemTypeBase,
// DefaultProblemTypeBase. Each ends in the problem's name (invalid-key,
// in-progress, ...), which idemhttp's README.md documents under a heading
// of that name, saying what the client should do. A service that sets
// ProblemTypeBase gets its base followed by the same names.
const (
	// DefaultProblemTypeBase is the default Options.ProblemTypeBase: the
	// idemhttp directory of the project's repository, whose README.md has
	// a section for each problem.
	DefaultProblemTypeBase = "https://github.com/idemdb/idem/tree/main/idemhttp#"
	problemBase            = DefaultProblemTypeBase

	// ProblemInvalidKey (400): the Idempotency-Key header is malformed.
	ProblemInvalidKey = problemBase + "invalid-key"
	// ProblemKeyRequired (400): the route requires an Idempotency-Key and
	// the request has none.
	ProblemKeyRequired = problemBase + "key-required"
	// ProblemBodyTooLarge (413): the request body is over
	// Options.MaxBodyBytes; the handler was not run.
	ProblemBodyTooLarge = problemBase + "body-too-large"
	// ProblemInProgress (409): a request with the same key is still
	// running; Retry-After says when to ask again (Options.RetryAfter).
	ProblemInProgress = problemBase + "in-progress"
	// ProblemKeyReused (422): the key was used before with another request
	// (method, route or body differ).
	ProblemKeyReused = problemBase + "key-reused"
	// ProblemNotStored (422): the request ran, but its response could not
	// be stored (it was streamed, hijacked or too large), so it cannot be
	// replayed and the request is not run again. The client must find out
	// the outcome another way, such as a GET of the resource.
	ProblemNotStored = problemBase + "response-not-stored"
	// ProblemStoreUnavailable (503): the idempotency store could not be
	// asked; the handler was not run.
	ProblemStoreUnavailable = problemBase + "store-unavailable"
	// ProblemCorrupt (500): the stored response for the key cannot be
	// decoded; the handler was not run.
	ProblemCorrupt = problemBase + "stored-response-corrupt"
	// ProblemBodyUnreadable (400): the request body could not be read to
	// the end (the client broke off or sent malformed chunks); the handler
	// was not run.
	ProblemBodyUnreadable = problemBase + "body-unreadable"
	// ProblemLeaseLost (409): the request ran, but its lease lapsed and
	// another request with the key took it over (or the key was deleted)
	// before its outcome was stored, and what the key holds now cannot be
	// replayed. Retry-After says when to retry with the same key, which
	// replays the key's outcome or runs the request again.
	ProblemLeaseLost = problemBase + "lease-lost"
)

var problemTitles = map[string]string{
	ProblemInvalidKey:       "Malformed Idempotency-Key header",
	ProblemKeyRequired:      "Idempotency-Key header required",
	ProblemBodyTooLarge:     "Request body too large",
	ProblemInProgress:       "A request with this idempotency key is in progress",
	ProblemKeyReused:        "Idempotency key reused with a different request",
	ProblemNotStored:        "The original response could not be stored",
	ProblemStoreUnavailable: "Idempotency store unavailable",
	ProblemCorrupt:          "Stored response cannot be read",
	ProblemBodyUnreadable:   "Request body unreadable",
	ProblemLeaseLost:        "The request lost its idempotency key before its outcome was stored",
}

// Problem is an application/problem+json body (RFC 9457) as the middleware
// writes it.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Key is the idempotency key the problem is about, when there is one.
	Key string `json:"idempotency_key,omitempty"`
}

// problemResponse builds the response for a problem of type typ (one of
// the Problem constants), under the configured type base and with the
// configured describedby link.
func (c *config) problemResponse(typ string, status int, key, detail string) *response {
	body, _ := json.Marshal(Problem{
		Type:   c.ProblemTypeBase + strings.TrimPrefix(typ, problemBase),
		Title:  problemTitles[typ],
		Status: status,
		Detail: detail,
		Key:    key,
	})
	h := http.Header{}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	if c.DescribedBy != "" {
		h.Set("Link", "<"+c.DescribedBy+`>; rel="describedby"`)
	}
	return &response{status: status, header: h, body: body}
}
