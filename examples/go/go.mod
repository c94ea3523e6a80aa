module asgi-hijack/examples/go

go 1.19
