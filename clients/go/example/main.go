// An mvr.v1 client in Go, generated from proto/mvr/v1 (clients/go/gen), end to end against a running
// server: create a collection, upsert precomputed vectors with typed metadata, stream an upsert,
// search with a filter, read a document back, list with pagination and with every filter operator,
// delete, and read the codes and field violations of errors from the status details. Every step checks what the API documents; the exit code is 0 only
// when all of them held.
//
//	bash clients/go/run.sh HOST:PORT
package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"time"

	mvrv1 "github.com/mvr-project/mvr/gen/go/mvr/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const dim = 8

// rng is a seeded linear congruential generator, so that runs are repeatable.
type rng struct{ state uint32 }

func (r *rng) next() float32 {
	r.state = r.state*1664525 + 1013904223
	return float32(r.state)/float32(1<<32) - 0.5
}

// unitRows returns n L2-normalised rows of dim values.
func unitRows(r *rng, n int) [][]float32 {
	rows := make([][]float32, n)
	for i := range rows {
		row, norm := make([]float32, dim), 0.0
		for j := range row {
			row[j] = r.next()
			norm += float64(row[j] * row[j])
		}
		for j := range row {
			row[j] /= float32(math.Sqrt(norm))
		}
		rows[i] = row
	}
	return rows
}

// pack turns rows into mvr.v1.Vectors: float32, row-major, little-endian.
func pack(rows [][]float32) *mvrv1.Vectors {
	data := make([]byte, 0, len(rows)*len(rows[0])*4)
	for _, row := range rows {
		for _, x := range row {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(x))
		}
	}
	return &mvrv1.Vectors{Dtype: mvrv1.DType_DTYPE_FLOAT32, Shape: []uint32{uint32(len(rows)), uint32(len(rows[0]))}, Data: data}
}

// unpack reads float32 or float16 Vectors back into rows.
func unpack(v *mvrv1.Vectors) [][]float32 {
	n, d := int(v.Shape[0]), int(v.Shape[1])
	rows := make([][]float32, n)
	for i := range rows {
		rows[i] = make([]float32, d)
		for j := range rows[i] {
			k := i*d + j
			if v.Dtype == mvrv1.DType_DTYPE_FLOAT16 {
				rows[i][j] = halfToFloat(binary.LittleEndian.Uint16(v.Data[2*k:]))
			} else {
				rows[i][j] = math.Float32frombits(binary.LittleEndian.Uint32(v.Data[4*k:]))
			}
		}
	}
	return rows
}

func halfToFloat(h uint16) float32 {
	sign, exponent, mantissa := uint32(h>>15), uint32(h>>10)&0x1f, uint32(h&0x3ff)
	switch {
	case exponent == 0:
		value := float32(mantissa) / 1024 * float32(math.Pow(2, -14))
		if sign == 1 {
			return -value
		}
		return value
	case exponent == 31:
		return math.Float32frombits(sign<<31 | 0xff<<23 | mantissa<<13)
	}
	return math.Float32frombits(sign<<31 | (exponent+112)<<23 | mantissa<<13)
}

func intValue(x int64) *mvrv1.MetadataValue {
	return &mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_IntValue{IntValue: x}}
}

func doubleValue(x float64) *mvrv1.MetadataValue {
	return &mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_DoubleValue{DoubleValue: x}}
}

func cond(key string, op mvrv1.FilterOperator, value *mvrv1.MetadataValue) *mvrv1.Filter {
	return &mvrv1.Filter{Kind: &mvrv1.Filter_Condition{Condition: &mvrv1.Condition{Key: key, Operator: op, Value: value}}}
}

func inValues(key string, op mvrv1.FilterOperator, values ...string) *mvrv1.Filter {
	condition := &mvrv1.Condition{Key: key, Operator: op}
	for _, v := range values {
		condition.Values = append(condition.Values, &mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_StringValue{StringValue: v}})
	}
	return &mvrv1.Filter{Kind: &mvrv1.Filter_Condition{Condition: condition}}
}

func exists(key string, present bool) *mvrv1.Filter {
	return &mvrv1.Filter{Kind: &mvrv1.Filter_Condition{Condition: &mvrv1.Condition{Key: key, Operator: mvrv1.FilterOperator_FILTER_OPERATOR_EXISTS, Exists: &present}}}
}

var failures int

func check(ok bool, format string, args ...interface{}) {
	if ok {
		fmt.Printf("ok    %s\n", fmt.Sprintf(format, args...))
		return
	}
	failures++
	fmt.Printf("FAIL  %s\n", fmt.Sprintf(format, args...))
}

func must(err error, what string) {
	if err != nil {
		fmt.Printf("FAIL  %s: %v\n", what, err)
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: example HOST:PORT")
		os.Exit(2)
	}
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure(), grpc.WithBlock(), grpc.WithTimeout(30*time.Second))
	must(err, "connect")
	defer conn.Close()
	collections := mvrv1.NewCollectionServiceClient(conn)
	documents := mvrv1.NewDocumentServiceClient(conn)
	search := mvrv1.NewSearchServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 1. a collection of precomputed 8-d vectors (no encoder model)
	id := fmt.Sprintf("go-example-%d", time.Now().UnixNano())
	parent := "collections/" + id
	created, err := collections.CreateCollection(ctx, &mvrv1.CreateCollectionRequest{
		CollectionId: id, Collection: &mvrv1.Collection{Dim: dim},
	})
	must(err, "CreateCollection")
	check(created.Collection.Name == parent && created.Collection.Dim == dim, "created %s (dim %d, FDE dim %d)",
		created.Collection.Name, created.Collection.Dim, created.Collection.Fde.OutputDim)

	// 2. upsert 20 documents in one atomic batch, with metadata
	r := &rng{state: 7}
	written := map[string][][]float32{}
	var batch []*mvrv1.Document
	for i := 0; i < 20; i++ {
		docID := fmt.Sprintf("d%02d", i)
		written[docID] = unitRows(r, 4+i%5)
		parity := map[bool]string{true: "even", false: "odd"}[i%2 == 0]
		typed := map[string]*mvrv1.MetadataValue{ // typed metadata: compared by type in filters
			"n":     {Kind: &mvrv1.MetadataValue_IntValue{IntValue: int64(i)}},
			"score": {Kind: &mvrv1.MetadataValue_DoubleValue{DoubleValue: float64(i) / 2}},
			"open":  {Kind: &mvrv1.MetadataValue_BoolValue{BoolValue: i%2 == 0}},
			"tags":  {Kind: &mvrv1.MetadataValue_StringListValue{StringListValue: &mvrv1.StringList{Values: []string{fmt.Sprintf("x%d", i%3), "all"}}}},
		}
		batch = append(batch, &mvrv1.Document{Id: docID, Vectors: pack(written[docID]), Metadata: map[string]string{"parity": parity}, TypedMetadata: typed})
	}
	upserted, err := documents.UpsertDocuments(ctx, &mvrv1.UpsertDocumentsRequest{Parent: parent, Documents: batch})
	must(err, "UpsertDocuments")
	allCreated := len(upserted.Statuses) == 20
	for _, s := range upserted.Statuses {
		allCreated = allCreated && s.Code == mvrv1.DocumentStatusCode_DOCUMENT_STATUS_CODE_CREATED
	}
	check(allCreated, "UpsertDocuments: 20 statuses, all CREATED")

	// 3. stream two more batches; each is acknowledged in order once durable
	stream, err := documents.StreamUpsertDocuments(ctx)
	must(err, "StreamUpsertDocuments")
	for b := 0; b < 2; b++ {
		var docs []*mvrv1.Document
		for i := 0; i < 5; i++ {
			docID := fmt.Sprintf("s%d-%d", b, i)
			written[docID] = unitRows(r, 3)
			docs = append(docs, &mvrv1.Document{Id: docID, Vectors: pack(written[docID]), Metadata: map[string]string{"parity": "streamed"}})
		}
		must(stream.Send(&mvrv1.StreamUpsertDocumentsRequest{Parent: parent, Documents: docs}), "stream send")
	}
	must(stream.CloseSend(), "stream close")
	acks := 0
	for {
		ack, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(err, "stream receive")
		check(ack.Ok && ack.BatchIndex == uint64(acks) && len(ack.Statuses) == 5, "stream batch %d acknowledged", ack.BatchIndex)
		acks++
	}
	check(acks == 2, "StreamUpsertDocuments: %d acknowledgements", acks)

	// 4. search with document d04's own vectors, filtered to even documents
	found, err := search.Search(ctx, &mvrv1.SearchRequest{
		Collection: parent, Query: &mvrv1.Query{Kind: &mvrv1.Query_Vectors{Vectors: pack(written["d04"])}},
		TopK: 5, Filter: map[string]string{"parity": "even"},
	})
	must(err, "Search")
	onlyEven := len(found.Hits) == 5
	for _, hit := range found.Hits {
		onlyEven = onlyEven && hit.Metadata["parity"] == "even"
	}
	check(len(found.Hits) > 0 && found.Hits[0].Id == "d04", "Search: top hit %s (score %.4f), query of %d tokens",
		found.Hits[0].Id, found.Hits[0].Score, found.QueryTokenCount)
	check(onlyEven, "Search: the filter kept only parity=even among %d hits", len(found.Hits))

	// 5. read a document back with its vectors (stored as float16 by default)
	got, err := documents.GetDocument(ctx, &mvrv1.GetDocumentRequest{Name: parent + "/documents/d07", IncludeVectors: true})
	must(err, "GetDocument")
	rows, maxError := unpack(got.Document.Vectors), 0.0
	for i, row := range rows {
		for j, x := range row {
			maxError = math.Max(maxError, math.Abs(float64(x-written["d07"][i][j])))
		}
	}
	check(got.Document.Id == "d07" && len(rows) == len(written["d07"]) && maxError < 1e-3,
		"GetDocument: %d tokens back, largest difference %.1e (float16 storage)", len(rows), maxError)

	// 6. list every document, 7 a page
	var listed []string
	pages, token := 0, ""
	for {
		page, err := documents.ListDocuments(ctx, &mvrv1.ListDocumentsRequest{Parent: parent, PageSize: 7, PageToken: token})
		must(err, "ListDocuments")
		pages++
		for _, d := range page.Documents {
			listed = append(listed, d.Id)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	check(len(listed) == 30 && pages == 5 && sort.StringsAreSorted(listed), "ListDocuments: %d ids in %d pages, in order", len(listed), pages)

	// 6b. typed metadata comes back typed, and every filter operator, with and / or / not
	n7, err := documents.GetDocument(ctx, &mvrv1.GetDocumentRequest{Name: parent + "/documents/d07"})
	must(err, "GetDocument d07")
	tags := n7.Document.TypedMetadata["tags"].GetStringListValue().GetValues()
	check(n7.Document.TypedMetadata["n"].GetIntValue() == 7 && len(tags) == 2 && tags[0] == "x1",
		"typed metadata read back: n=%d tags=%v", n7.Document.TypedMetadata["n"].GetIntValue(), tags)
	filters := []struct {
		name  string
		where *mvrv1.Filter
		want  int
	}{
		{"n == 7", cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_EQ, intValue(7)), 1},
		{"n != 7 (also documents without n)", cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_NE, intValue(7)), 29},
		{"n > 14", cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_GT, intValue(14)), 5},
		{"n >= 14", cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_GTE, intValue(14)), 6},
		{"score < 1.5", cond("score", mvrv1.FilterOperator_FILTER_OPERATOR_LT, doubleValue(1.5)), 3},
		{"score <= 1.5", cond("score", mvrv1.FilterOperator_FILTER_OPERATOR_LTE, doubleValue(1.5)), 4},
		{"tags in [x1]", inValues("tags", mvrv1.FilterOperator_FILTER_OPERATOR_IN, "x1"), 7},
		{"tags not in [x1, x2]", inValues("tags", mvrv1.FilterOperator_FILTER_OPERATOR_NIN, "x1", "x2"), 17},
		{"score exists", exists("score", true), 20},
		{"score does not exist", exists("score", false), 10},
		{"open and n < 10", &mvrv1.Filter{Kind: &mvrv1.Filter_AllOf{AllOf: &mvrv1.FilterList{Filters: []*mvrv1.Filter{
			cond("open", mvrv1.FilterOperator_FILTER_OPERATOR_EQ, &mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_BoolValue{BoolValue: true}}),
			cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_LT, intValue(10))}}}}, 5},
		{"n == 1 or n == 2", &mvrv1.Filter{Kind: &mvrv1.Filter_AnyOf{AnyOf: &mvrv1.FilterList{Filters: []*mvrv1.Filter{
			cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_EQ, intValue(1)),
			cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_EQ, intValue(2))}}}}, 2},
		{"not parity == streamed", &mvrv1.Filter{Kind: &mvrv1.Filter_Negation{Negation: cond("parity",
			mvrv1.FilterOperator_FILTER_OPERATOR_EQ, &mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_StringValue{StringValue: "streamed"}})}}, 20},
	}
	for _, f := range filters {
		page, err := documents.ListDocuments(ctx, &mvrv1.ListDocumentsRequest{Parent: parent, PageSize: 100, Where: f.where})
		must(err, "ListDocuments "+f.name)
		check(len(page.Documents) == f.want, "ListDocuments where %s: %d documents (expected %d)", f.name, len(page.Documents), f.want)
	}
	_, err = documents.ListDocuments(ctx, &mvrv1.ListDocumentsRequest{Parent: parent, Where: cond("n", mvrv1.FilterOperator_FILTER_OPERATOR_GT,
		&mvrv1.MetadataValue{Kind: &mvrv1.MetadataValue_StringValue{StringValue: "14"}})})
	check(status.Code(err) == codes.InvalidArgument, "a range with a string operand: %v (%s)", status.Code(err), status.Convert(err).Message())

	// 7. delete one document and one that does not exist
	deleted, err := documents.DeleteDocuments(ctx, &mvrv1.DeleteDocumentsRequest{Parent: parent, Ids: []string{"d00", "missing"}})
	must(err, "DeleteDocuments")
	check(len(deleted.DeletedIds) == 1 && deleted.DeletedIds[0] == "d00" && len(deleted.NotFoundIds) == 1 && deleted.NotFoundIds[0] == "missing",
		"DeleteDocuments: deleted %v, not found %v", deleted.DeletedIds, deleted.NotFoundIds)
	_, err = documents.GetDocument(ctx, &mvrv1.GetDocumentRequest{Name: parent + "/documents/d00"})
	check(status.Code(err) == codes.NotFound, "GetDocument of the deleted document: %v", status.Code(err))

	// 8. errors: a malformed vector is INVALID_ARGUMENT with a BadRequest field violation in the status
	// details; vectors of another dimension than the collection's are FAILED_PRECONDITION (well formed,
	// but not for this collection)
	malformed := pack(unitRows(r, 2))
	malformed.Data = malformed.Data[:len(malformed.Data)-4]
	_, err = documents.UpsertDocuments(ctx, &mvrv1.UpsertDocumentsRequest{Parent: parent, Documents: []*mvrv1.Document{{Id: "bad", Vectors: malformed}}})
	field := ""
	for _, detail := range status.Convert(err).Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok && len(badRequest.FieldViolations) > 0 {
			field = badRequest.FieldViolations[0].Field
		}
	}
	check(status.Code(err) == codes.InvalidArgument && field == "documents[0].vectors.data",
		"malformed vector: %v, field violation %q", status.Code(err), field)
	wrongDim := &mvrv1.Vectors{Dtype: mvrv1.DType_DTYPE_FLOAT32, Shape: []uint32{1, dim - 1}, Data: make([]byte, 4*(dim-1))}
	_, err = search.Search(ctx, &mvrv1.SearchRequest{Collection: parent, Query: &mvrv1.Query{Kind: &mvrv1.Query_Vectors{Vectors: wrongDim}}})
	check(status.Code(err) == codes.FailedPrecondition, "a %d-d query against a %d-d collection: %v (%s)", dim-1, dim, status.Code(err), status.Convert(err).Message())

	// 9. clean up
	_, err = collections.DeleteCollection(ctx, &mvrv1.DeleteCollectionRequest{Name: parent})
	must(err, "DeleteCollection")
	_, err = collections.GetCollection(ctx, &mvrv1.GetCollectionRequest{Name: parent})
	check(status.Code(err) == codes.NotFound, "GetCollection after DeleteCollection: %v", status.Code(err))

	if failures > 0 {
		fmt.Printf("%d checks failed\n", failures)
		os.Exit(1)
	}
	fmt.Println("all checks passed")
}
