using System.Text;
using PruneKernel.Runtime;

namespace PruneKernel.Text;

/// <summary>Kinds of SentencePiece vocabulary entries (sentencepiece_model.proto's SentencePiece.Type).</summary>
internal enum PieceType
{
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// <summary>One vocabulary entry of a SentencePiece model.</summary>
internal readonly record struct Piece(string Text, float Score, PieceType Type);

/// <summary>
/// Reads the vocabulary of a SentencePiece <c>tokenizer.model</c> (a protobuf ModelProto). Only field 1, the pieces,
/// is needed: Hugging Face's Llama tokenizer rebuilds its BPE merges from piece scores.
/// </summary>
internal static class SentencePieceModel
{
    public static IReadOnlyList<Piece> ReadPieces(string path)
    {
        byte[] bytes;
        try
        {
            bytes = BoundedFile.ReadAllBytes(path, BoundedFile.TokenizerBytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TokenizerException($"{path}: cannot read the SentencePiece model ({e.Message}).", e);
        }

        try
        {
            var pieces = new List<Piece>();
            var reader = new ProtoReader(bytes, 0, bytes.Length);
            while (reader.Next(out var field, out var wire))
            {
                if (field == 1 && wire == 2)
                {
                    pieces.Add(ReadPiece(reader.Bytes()));
                }
                else
                {
                    reader.Skip(wire);
                }
            }

            return pieces.Count > 0 ? pieces : throw new TokenizerException($"{path}: the SentencePiece model has no pieces.");
        }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            // ArgumentException: a piece's text is not valid UTF-8 (DecoderFallbackException).
            throw new TokenizerException($"{path}: not a SentencePiece model ({e.Message}).", e);
        }
    }

    private static Piece ReadPiece(ReadOnlyMemory<byte> message)
    {
        var text = string.Empty;
        var score = 0f;
        var type = PieceType.Normal;
        var reader = new ProtoReader(message);
        while (reader.Next(out var field, out var wire))
        {
            switch (field, wire)
            {
                case (1, 2):
                    text = new UTF8Encoding(false, true).GetString(reader.Bytes().Span);
                    break;
                case (2, 5):
                    score = reader.Fixed32AsFloat();
                    break;
                case (3, 0):
                    type = (PieceType)reader.Varint();
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        return new Piece(text, score, type);
    }

    /// <summary>A minimal protobuf wire-format reader; every read is bounds-checked and malformed input is a FormatException.</summary>
    private sealed class ProtoReader
    {
        private readonly ReadOnlyMemory<byte> _data;
        private int _pos;

        public ProtoReader(byte[] data, int start, int length) => _data = new ReadOnlyMemory<byte>(data, start, length);

        public ProtoReader(ReadOnlyMemory<byte> data) => _data = data;

        public bool Next(out int field, out int wire)
        {
            if (_pos >= _data.Length)
            {
                field = wire = 0;
                return false;
            }

            var key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong value = 0;
            for (var shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length)
                {
                    throw new FormatException("truncated varint");
                }

                var b = _data.Span[_pos++];
                value |= (ulong)(b & 0x7f) << shift;
                if ((b & 0x80) == 0)
                {
                    return value;
                }
            }

            throw new FormatException("varint longer than 10 bytes");
        }

        public ReadOnlyMemory<byte> Bytes()
        {
            var length = Varint();
            if (length > (ulong)(_data.Length - _pos))
            {
                throw new FormatException("length-delimited field runs past the end");
            }

            var slice = _data.Slice(_pos, (int)length);
            _pos += (int)length;
            return slice;
        }

        public float Fixed32AsFloat()
        {
            if (_pos + 4 > _data.Length)
            {
                throw new FormatException("truncated fixed32");
            }

            var value = BitConverter.ToSingle(_data.Span.Slice(_pos, 4));
            _pos += 4;
            return value;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0:
                    Varint();
                    break;
                case 1:
                    Advance(8);
                    break;
                case 2:
                    Bytes();
                    break;
                case 5:
                    Advance(4);
                    break;
                default:
                    throw new FormatException($"unsupported wire type {wire}");
            }
        }

        private void Advance(int count)
        {
            if (_pos + count > _data.Length)
            {
                throw new FormatException("truncated field");
            }

            _pos += count;
        }
    }
}
