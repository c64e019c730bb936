package idemhttp

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every problem type leads to documentation that exists: the type is
// DefaultProblemTypeBase (the idemhttp directory on GitHub, which shows
// this README.md) followed by "#" and a name, and the README has a heading
// of exactly that name, which GitHub makes the anchor.
func TestProblemTypesAreDocumented(t *testing.T) {
	f, err := os.Open("README.md")
	require.NoError(t, err)
	defer f.Close()
	headings := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "### "); ok {
			headings[name] = true
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, problemTitles)
	for typ := range problemTitles {
		name, ok := strings.CutPrefix(typ, DefaultProblemTypeBase)
		require.True(t, ok, typ)
		require.Regexp(t, `^[a-z]+(-[a-z]+)*$`, name, "a name GitHub keeps as it is in the anchor")
		require.True(t, headings[name], "README.md has no heading %q for %s", name, typ)
	}
	require.Equal(t, "https://github.com/idemdb/idem/tree/main/idemhttp#", DefaultProblemTypeBase)
}
