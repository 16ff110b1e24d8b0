using PruneKernel.Checkpoints;

namespace PruneKernel.Tests.Checkpoints;

public sealed class CheckpointWeightsErrorTests
{
    private static readonly byte[] ShardA = SafetensorsTestFiles.Build([new("a", "U8", [2], [1, 2])]);
    private static readonly byte[] ShardB = SafetensorsTestFiles.Build([new("b", "U8", [1], [3])]);

    [Fact]
    public void OpensCraftedShards()
    {
        using var dir = ShardedFolder("""{"metadata":{"total_size":3},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}""");
        using var weights = CheckpointWeights.Open(dir.Path);
        Assert.Equal(["a", "b"], weights.Names);
        Assert.Equal(Path.Combine(dir.Path, "s2.safetensors"), weights.FileOf("b"));
        using var b = weights.ReadTensor("b");
        Assert.Equal((byte)3, b.item<byte>());
    }

    [Fact]
    public void FolderMissing()
    {
        using var dir = new TempFolder();
        var missing = Path.Combine(dir.Path, "nope");
        var ex = Assert.Throws<CheckpointFormatException>(() => CheckpointWeights.Open(missing));
        Assert.Equal(missing, ex.FilePath);
    }

    [Fact]
    public void NeitherFilePresent()
    {
        using var dir = new TempFolder();
        dir.Write("config.json", "{}");
        var ex = Assert.Throws<CheckpointFormatException>(() => CheckpointWeights.Open(dir.Path));
        Assert.StartsWith(dir.Path, ex.Message);
        Assert.Contains("model.safetensors.index.json", ex.Message);
    }

    [Fact]
    public void BrokenSingleFileNamesIt()
    {
        using var dir = new TempFolder();
        var path = dir.Write("model.safetensors", new byte[] { 1, 2 });
        var ex = Assert.Throws<CheckpointFormatException>(() => CheckpointWeights.Open(dir.Path));
        Assert.Equal(path, ex.FilePath);
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("[]")]
    [InlineData("""{"metadata":{}}""")]
    [InlineData("""{"weight_map":[]}""")]
    [InlineData("""{"weight_map":{}}""")]
    [InlineData("""{"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}}""")]
    public void IndexMalformed(string index)
    {
        using var dir = ShardedFolder(index);
        AssertIndexFails(dir, tensor: null);
    }

    [Theory]
    [InlineData("""{"weight_map":{"a":3}}""")]
    [InlineData("""{"weight_map":{"a":""}}""")]
    [InlineData("""{"weight_map":{"a":"../s1.safetensors"}}""")]
    [InlineData("""{"weight_map":{"a":"/etc/passwd"}}""")]
    public void IndexEntryMalformed(string index)
    {
        using var dir = ShardedFolder(index);
        AssertIndexFails(dir, tensor: "a");
    }

    [Fact]
    public void ShardMissing()
    {
        using var dir = ShardedFolder("""{"weight_map":{"a":"s1.safetensors","b":"s9.safetensors"}}""");
        var ex = AssertIndexFails(dir, tensor: "b");
        Assert.Contains("s9.safetensors", ex.Message);
        Assert.Contains("does not exist", ex.Message);
    }

    [Fact]
    public void TensorAbsentFromItsShard()
    {
        using var dir = ShardedFolder("""{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}""");
        var ex = AssertIndexFails(dir, tensor: "b");
        Assert.Contains("s1.safetensors", ex.Message);
    }

    [Fact]
    public void TensorInTwoShards()
    {
        using var dir = ShardedFolder("""{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}""");
        dir.Write("s2.safetensors", SafetensorsTestFiles.Build([new("b", "U8", [1], [3]), new("a", "U8", [2], [1, 2])]));
        var ex = AssertIndexFails(dir, tensor: "a");
        Assert.Contains("s1.safetensors", ex.Message);
        Assert.Contains("s2.safetensors", ex.Message);
    }

    [Fact]
    public void BrokenShardNamesTheShard()
    {
        using var dir = ShardedFolder("""{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}""");
        var shard = dir.Write("s2.safetensors", SafetensorsTestFiles.FromHeader("{"));
        var ex = Assert.Throws<CheckpointFormatException>(() => CheckpointWeights.Open(dir.Path));
        Assert.Equal(shard, ex.FilePath);
    }

    [Fact]
    public void UnknownTensorName()
    {
        using var dir = ShardedFolder("""{"weight_map":{"a":"s1.safetensors"}}""");
        using var weights = CheckpointWeights.Open(dir.Path);
        var ex = Assert.Throws<CheckpointFormatException>(() => weights.ReadTensor("zzz"));
        Assert.Equal("zzz", ex.TensorName);
        Assert.Contains(dir.Path, ex.Message);
        Assert.Throws<CheckpointFormatException>(() => weights.GetInfo("b"));
        Assert.Throws<CheckpointFormatException>(() => weights.FileOf("b"));
    }

    private static TempFolder ShardedFolder(string index)
    {
        var dir = new TempFolder();
        dir.Write("s1.safetensors", ShardA);
        dir.Write("s2.safetensors", ShardB);
        dir.Write(CheckpointWeights.IndexFileName, index);
        return dir;
    }

    private static CheckpointFormatException AssertIndexFails(TempFolder dir, string? tensor)
    {
        var ex = Assert.Throws<CheckpointFormatException>(() => CheckpointWeights.Open(dir.Path));
        var index = Path.Combine(dir.Path, CheckpointWeights.IndexFileName);
        Assert.Equal(index, ex.FilePath);
        Assert.StartsWith(index, ex.Message);
        Assert.Equal(tensor, ex.TensorName);
        if (tensor is not null)
        {
            Assert.Contains($"tensor '{tensor}'", ex.Message);
        }

        return ex;
    }
}
