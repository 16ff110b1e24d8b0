using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Tests.Evaluation;

/// <summary>The JSONL reader rejects bad rows with the file and line; valid external rows need only the required fields.</summary>
public sealed class BenchmarkJsonlTests
{
    private const string Good = """{"id":"a","image":"img.png","context":[{"role":"user","content":"Hi."},{"role":"assistant","content":"Hello."}],"question":"What colour is the star?","answer":"gray","answer_aliases":["grey"],"kind":"colour","bbox":{"x":1,"y":2,"width":3,"height":4},"size_class":"small","length_group":500,"text_tokens":498,"variant":"image","scene_id":"s1","misleading":false}""";

    private static string WriteFile(params string[] lines)
    {
        var path = Path.Combine(Path.GetTempPath(), "pk-jsonl-" + Guid.NewGuid().ToString("N") + ".jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void MinimalExternalRowsAreAccepted()
    {
        var path = WriteFile("""{"id":"x1","image":"/data/cat.jpg","question":"What animal is this?","answer":"cat"}""", "", Good);
        try
        {
            var rows = BenchmarkJsonl.Read(path, TestContext.Current.CancellationToken);
            Assert.Equal(2, rows.Count);
            Assert.Empty(rows[0].Context);
            Assert.Equal("image", rows[0].Variant);
            Assert.Equal("/data/cat.jpg", BenchmarkJsonl.ResolveImagePath(path, rows[0]));
            Assert.True(BenchmarkPrompt.IsCorrect(rows[1], "Grey."));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("{not json", "not a valid row")]
    [InlineData("""{"id":"b","image":"i.png","answer":"x"}""", "question")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":""}""", "'answer' is empty")]
    [InlineData("""{"id":"a","image":"i.png","question":"q?","answer":"x"}""", "duplicate id 'a'")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","context":[{"role":"system","content":"c"}]}""", "context role 'system'")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","context":[{"role":"user"}]}""", "content")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","variant":"grey"}""", "variant 'grey'")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","bbox":{"x":0,"y":0,"width":0,"height":5}}""", "non-positive size")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","bbox":{"x":-4,"y":0,"width":3,"height":5}}""", "negative corner")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","size_class":"huge"}""", "size_class 'huge'")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","text_tokens":0}""", "'text_tokens' must be positive")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","length_group":-500}""", "'length_group' must be positive")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","answer_aliases":["", "y"]}""", "'answer_aliases' has an empty entry")]
    [InlineData("""{"id":"b","image":"i.png","question":"q?","answer":"x","misleading":"sometimes"}""", "not a valid row")]
    [InlineData("null", "row is null")]
    public void BadRowIsRejectedWithItsLine(string badRow, string problem)
    {
        var path = WriteFile(Good, "", badRow, Good.Replace("\"id\":\"a\"", "\"id\":\"c\"", StringComparison.Ordinal));
        try
        {
            var e = Assert.Throws<BenchmarkFormatException>(() => BenchmarkJsonl.Read(path, TestContext.Current.CancellationToken));
            Assert.Equal(3, e.Line);
            Assert.Equal(path, e.FilePath);
            Assert.Contains(problem, e.Problem, StringComparison.Ordinal);
            Assert.StartsWith($"{path}:3: ", e.Message, StringComparison.Ordinal);
            Assert.IsAssignableFrom<PruneKernelException>(e);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void MissingFileIsAFormatError()
    {
        var e = Assert.Throws<BenchmarkFormatException>(() => BenchmarkJsonl.Read("/no/such/file.jsonl", TestContext.Current.CancellationToken));
        Assert.Contains("not found", e.Message, StringComparison.Ordinal);
    }
}
